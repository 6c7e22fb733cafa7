"""PNG figures of a run and of a comparison (matplotlib, Agg backend, no display needed)."""

import os
import pathlib
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _save(fig, path: pathlib.Path) -> None:
    """Writes atomically: a half-written PNG never replaces a good one."""
    path = pathlib.Path(path)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def plot_training(
    step_log: Sequence[Mapping[str, float]],
    epoch_log: Sequence[Mapping[str, float]],
    modalities: Sequence[str],
    path: str | pathlib.Path,
    title: str = "",
) -> None:
    """Coefficients (and scores) over steps; fused and per-modality accuracies over epochs.

    Args:
      step_log: entries with 'step' and optionally 'k/<m>' and 'score/<m>'.
      epoch_log: entries with 'epoch', 'val/accuracy' and 'val/accuracy/<m>', and
        'test/accuracy' when the test split was evaluated every epoch.
      modalities: modality names.
      path: output PNG.
      title: figure title (e.g. method and seed).
    """
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = [e["step"] for e in step_log]
    for m in modalities:
        if step_log and f"k/{m}" in step_log[0]:
            axes[0].plot(steps, [e[f"k/{m}"] for e in step_log], label=f"k {m}")
        if step_log and f"score/{m}" in step_log[0]:
            axes[1].plot(steps, [e[f"score/{m}"] for e in step_log], label=f"score {m}")
        elif step_log and f"train/accuracy/{m}" in step_log[0]:
            axes[1].plot(steps, [e[f"train/accuracy/{m}"] for e in step_log], label=f"acc {m}")
    axes[0].axhline(1.0, color="grey", lw=0.5)
    axes[0].set_title("balancing coefficients k (train steps)")
    axes[1].set_title("unimodal train score per step")
    epochs = [e["epoch"] for e in epoch_log]
    axes[2].plot(epochs, [e["val/accuracy"] for e in epoch_log], "k-", label="fused")
    for m in modalities:
        axes[2].plot(epochs, [e[f"val/accuracy/{m}"] for e in epoch_log], label=m)
    title = "validation accuracy"
    if epoch_log and all("test/accuracy" in e for e in epoch_log):  # eval_test_every_epoch
        axes[2].plot(epochs, [e["test/accuracy"] for e in epoch_log], "k--", label="fused (test)")
        title = "validation (and fused test) accuracy"
    axes[2].set_title(title)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("step")
    axes[2].set_xlabel("epoch")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, pathlib.Path(path))


def plot_comparison(
    table: Mapping[str, Mapping[str, tuple[float, float]]],
    metrics: Sequence[str],
    path: str | pathlib.Path,
    title: str = "",
) -> None:
    """Grouped bars with std error bars, one group per metric, one bar per method (Fig. 3 style).

    Args:
      table: method -> metric -> (mean, std), accuracies in [0, 1].
      metrics: the metrics to show, in order.
      path: output PNG.
      title: figure title.
    """
    methods = list(table)
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(metrics) * len(methods) / 2), 4))
    for i, method in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(metrics))]
        means = [100 * table[method][m][0] for m in metrics]
        stds = [100 * table[method][m][1] for m in metrics]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=method)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(metrics)
    ax.set_ylabel("accuracy (%)")
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, pathlib.Path(path))
