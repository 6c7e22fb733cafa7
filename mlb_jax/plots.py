"""PNG figures of a run, its evaluation and a comparison (matplotlib, Agg backend, no display)."""

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np

from mlb_jax.paths import PathLike, write_atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _save(fig, path: PathLike) -> None:
    """Writes atomically: a half-written PNG never replaces a good one.

    matplotlib writes into memory and `write_atomic` writes the bytes, so `path` may be on any
    filesystem epath handles (gs://, ...).
    """
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, png.getvalue())


def plot_training(
    step_log: Sequence[Mapping[str, float]],
    epoch_log: Sequence[Mapping[str, float]],
    modalities: Sequence[str],
    path: PathLike,
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
    _save(fig, path)


def plot_comparison(
    table: Mapping[str, Mapping[str, tuple[float, float]]],
    metrics: Sequence[str],
    path: PathLike,
    title: str = "",
    ylabel: str = "accuracy (%)",
) -> None:
    """Grouped bars with std error bars, one group per metric, one bar per method (Fig. 3 style).

    Args:
      table: method -> metric -> (mean, std), fractions (shown x 100).
      metrics: the metrics to show, in order.
      path: output PNG.
      title: figure title.
      ylabel: the y axis label.
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
    ax.set_ylabel(ylabel)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


# ----------------------------------------------------------------------------- evaluation


def _panels(n: int, width: float = 4.0, height: float = 3.6):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def plot_confusion(matrices: Mapping[str, Any], path: PathLike, title: str = "") -> None:
    """Confusion matrices, one panel per head, rows normalised to the true class.

    Args:
      matrices: head name -> [K, K] counts (row: true class, column: prediction).
      path: output PNG.
      title: figure title.
    """
    fig, axes = _panels(len(matrices))
    for ax, (name, counts) in zip(axes, matrices.items()):
        counts = np.asarray(counts, np.float64)
        rows = np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
        ax.imshow(counts / rows, vmin=0.0, vmax=1.0, cmap="Blues")
        k = len(counts)
        if k <= 12:  # counts stay legible only for few classes
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7)
        ax.set_title(name)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_reliability(heads: Mapping[str, Mapping[str, Any]], path, title: str = "") -> None:
    """Reliability diagrams, one panel per head: accuracy against confidence per bin.

    Args:
      heads: head name -> {'reliability': {'count', 'accuracy', 'confidence'} per bin,
        'ece', 'classwise_ece'} (`mlb_jax.evaluate.head_metrics`).
      path: output PNG.
      title: figure title.
    """
    fig, axes = _panels(len(heads))
    for ax, (name, h) in zip(axes, heads.items()):
        rel = h["reliability"]
        n = len(rel["count"])
        centres = (np.arange(n) + 0.5) / n
        acc = np.array([np.nan if a is None else a for a in rel["accuracy"]], np.float64)
        ax.bar(centres, np.nan_to_num(acc), width=1.0 / n, edgecolor="k", label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}: ECE {h['ece']:.3f}, cw-ECE {h['classwise_ece']:.3f}")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.legend(loc="upper left", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_subsets(subsets: Mapping[str, Any], path, title: str = "") -> None:
    """Fused accuracy per modality subset, and each modality's Shapley value.

    Args:
      subsets: {'accuracy': subset name -> accuracy, 'shapley': modality -> value,
        'imbalance_index': float or None, 'absent': str}.
      path: output PNG.
      title: figure title.
    """
    fig, (ax0, ax1) = _panels(2, width=5.0)
    acc = subsets["accuracy"]
    ax0.bar(range(len(acc)), [100 * a for a in acc.values()])
    ax0.set_xticks(range(len(acc)))
    ax0.set_xticklabels(list(acc), rotation=30, ha="right", fontsize=8)
    ax0.set_ylabel("fused accuracy (%)")
    ax0.set_title(f"subsets (absent: {subsets['absent']} input)")
    shap = subsets["shapley"]
    ax1.bar(range(len(shap)), [100 * v for v in shap.values()], color="tab:orange")
    ax1.set_xticks(range(len(shap)))
    ax1.set_xticklabels(list(shap))
    ax1.axhline(0, color="grey", lw=0.5)
    ax1.set_ylabel("Shapley value (accuracy points)")
    imb = subsets.get("imbalance_index")
    ax1.set_title("Shapley values" + ("" if imb is None else f", imbalance {imb:.2f}"))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_robustness(robustness: Mapping[str, Any], path, title: str = "") -> None:
    """Fused accuracy against noise strength, one curve per noised modality.

    Args:
      robustness: {'levels': [L], 'accuracy': modality -> [L]} (or -> ([L] mean, [L] std)
        when `std` curves are given as a pair, as the compare runner does).
      path: output PNG.
      title: figure title.
    """
    fig, axes = _panels(1, width=5.0)
    ax = axes[0]
    levels = robustness["levels"]
    for m, curve in robustness["accuracy"].items():
        if isinstance(curve, tuple):
            mean, std = (np.asarray(c, np.float64) for c in curve)
            ax.errorbar(levels, 100 * mean, yerr=100 * std, marker="o", capsize=3, label=m)
        else:
            ax.plot(levels, [100 * a for a in curve], marker="o", label=f"noise on {m}")
    ax.set_xlabel("noise sigma (input standard deviations)")
    ax.set_ylabel("fused accuracy (%)")
    ax.legend()
    ax.set_title(title or "robustness to noise on one modality")
    fig.tight_layout()
    _save(fig, path)


def plot_agreement(agreement: Mapping[str, Any], modalities: Sequence[str], path, title="") -> None:
    """The paper's Figure 4: fused accuracy per correctness pattern of the unimodal models.

    Two modalities: a 2x2 grid (rows: first modality wrong / right, columns: second) showing
    the fused accuracy and the number of examples; more: one bar per pattern.

    Args:
      agreement: {'reference': str, 'patterns': [{'pattern', 'count', 'fused_accuracy'}]}
        in pattern-bitmask order (`mlb_jax.attribution.agreement`).
      modalities: modality names, in order.
      path: output PNG.
      title: figure title.
    """
    patterns = agreement["patterns"]
    acc = [np.nan if p["fused_accuracy"] is None else 100 * p["fused_accuracy"] for p in patterns]
    if len(modalities) == 2:
        fig, axes = _panels(1, width=4.6, height=4.0)
        ax = axes[0]
        grid = np.array([[acc[0], acc[2]], [acc[1], acc[3]]])  # bit 0: first modality right
        counts = [
            [patterns[0]["count"], patterns[2]["count"]],
            [patterns[1]["count"], patterns[3]["count"]],
        ]
        ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn")
        for i in range(2):
            for j in range(2):
                text = "—" if np.isnan(grid[i, j]) else f"{grid[i, j]:.1f}%"
                ax.text(j, i, f"{text}\nn={counts[i][j]}", ha="center", va="center")
        a, v = modalities
        ax.set_xticks([0, 1])
        ax.set_xticklabels([f"{v} wrong", f"{v} right"])
        ax.set_yticks([0, 1])
        ax.set_yticklabels([f"{a} wrong", f"{a} right"])
    else:
        fig, axes = _panels(1, width=max(5.0, 0.8 * len(patterns)))
        ax = axes[0]
        ax.bar(range(len(patterns)), np.nan_to_num(acc))
        ax.set_xticks(range(len(patterns)))
        ax.set_xticklabels([p["pattern"] for p in patterns], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("fused accuracy (%)")
    ax.set_title(f"{title}\nfused accuracy by {agreement['reference']}", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_metric_bars(
    values: Mapping[str, tuple[float, float]], path, ylabel: str, title: str = ""
) -> None:
    """One bar per method with a std error bar (e.g. ECE per method, the paper's Figure 5).

    Args:
      values: method -> (mean, std).
      path: output PNG.
      ylabel: the metric's axis label.
      title: figure title.
    """
    fig, axes = _panels(1, width=max(5.0, 0.9 * len(values)))
    ax = axes[0]
    ax.bar(
        range(len(values)),
        [v[0] for v in values.values()],
        yerr=[v[1] for v in values.values()],
        capsize=3,
    )
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(list(values), rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


# ----------------------------------------------------------------------------- tuning


def plot_tuning(
    records: Sequence[Mapping[str, Any]],
    log_scale: Mapping[str, bool],
    chosen: int,
    path: PathLike,
    title: str = "",
) -> None:
    """Validation accuracy of every trial against each tuned hyper-parameter, one panel each.

    Args:
      records: the trials, each {'trial': i, 'setting': {name: value}, 'val_accuracy': a}
        (a fraction, shown x 100).
      log_scale: name -> whether its axis is logarithmic; the panels' order. Values that are
        not numbers (e.g. MLB's placement) are shown as categories.
      chosen: index into `records` of the chosen trial (drawn as a red star).
      path: output PNG.
      title: figure title.
    """
    fig, axes = _panels(max(1, len(log_scale)))
    acc = np.array([100 * r["val_accuracy"] for r in records])
    for ax, (name, log) in zip(axes, log_scale.items()):
        values = [r["setting"][name] for r in records]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            xs = np.array(values, np.float64)
            if log:
                ax.set_xscale("log")
        else:  # categories in first-seen order
            cats = list(dict.fromkeys(str(v) for v in values))
            xs = np.array([cats.index(str(v)) for v in values], np.float64)
            ax.set_xticks(range(len(cats)))
            ax.set_xticklabels(cats)
        ax.scatter(xs, acc, color="tab:blue", label="trial")
        ax.scatter(xs[chosen], acc[chosen], color="tab:red", marker="*", s=200, label="chosen")
        ax.set_xlabel(name)
        ax.set_ylabel("validation accuracy (%)")
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
