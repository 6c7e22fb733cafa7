"""Comparison runner: methods x seeds on one config, then a table and a Figure-3-style plot.

    python -m mlb_jax.compare --config=configs/synthetic_av.py \
        --methods=joint,multiloss,mlb --seeds=0,1,2 --workdir=runs/compare

Each run lives in `<workdir>/<row>/seed_<s>`; a run whose results.json exists is not
repeated, and an interrupted one resumes from its checkpoint. `unimodal` runs one row per
modality (`unimodal_audio`, ...); `ensemble`, `pre_frozen` and `pre_finetuned` are built on
those runs of the same seed, which run first (and are added when not asked for):

    python -m mlb_jax.compare --config=configs/synthetic_av.py --workdir=runs/reference_rows \
        --methods=unimodal,ensemble,pre_frozen,pre_finetuned,joint,mlb
 `comparison.md` holds mean ±
std over seeds of fused test accuracy, unimodal and probe accuracy per modality, and ECE; and,
from each run's evaluation.json (mlb_jax/evaluate.py), fused macro-F1, each modality's
Shapley value and the imbalance index, plus tables of accuracy per modality subset, under
noise and per agreement pattern. When the comparison trained unimodal runs, every other row
of the same seed uses them as its agreement reference (`config.evaluate.unimodal_workdirs`).
Figures: comparison.png (accuracies), comparison_ece.png (ECE per method, the paper's Figure
5), comparison_shapley.png and comparison_robustness.png (mean ± std over seeds).
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from mlb_jax import paths

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "comparison directory")
_METHODS = flags.DEFINE_list(
    "methods", ["joint", "multiloss", "mlb"], "methods to compare ('all': every registered one)"
)


class _SeedsParser(flags.ListParser):
    """Comma-separated seeds -> a non-empty list of integers >= 0."""

    def parse(self, argument: str | list) -> list[int]:
        items = super().parse(argument)
        try:
            seeds = [int(s) for s in items]
        except (TypeError, ValueError):
            seeds = []
        if not seeds or min(seeds) < 0:
            raise ValueError("seeds are integers >= 0, comma-separated: e.g. --seeds=0,1,2")
        return seeds

    def flag_type(self) -> str:
        return "comma separated list of integers"


_SEEDS = flags.DEFINE(
    _SeedsParser(), "seeds", "0,1,2", "seeds", serializer=flags.CsvListSerializer(",")
)
flags.mark_flags_as_required(["config", "workdir"])


def expand_methods(names: list[str]) -> list[str]:
    """The method names to run: 'all' stands for every registered method, in registry order.

    Raises:
        ValueError: naming an unknown method (before anything runs).
    """
    from mlb_jax.methods import METHODS

    out: list[str] = []
    for name in names:
        for method in list(METHODS) if name == "all" else [name]:
            if method not in METHODS:
                raise ValueError(
                    f"unknown method {method!r} in --methods; choose from all, {', '.join(METHODS)}"
                )
            if method not in out:
                out.append(method)
    return out


def plan_rows(methods: list[str], modalities: list[str]) -> list[tuple[str, str, str]]:
    """The table's rows in run order: (row name, method, modality of a unimodal run or '').

    'unimodal' becomes one row per modality ('unimodal_<m>'). Methods built on unimodal runs
    (ensemble, pre_frozen, pre_finetuned) come after those rows, which are added if missing.
    """
    rows = [(f"unimodal_{m}", "unimodal", m) for m in modalities] if needs_unimodal(methods) else []
    return rows + [(method, method, "") for method in methods if method != "unimodal"]


def needs_unimodal(methods: list[str]) -> bool:
    """Whether `methods` include unimodal runs or a method built on them."""
    from mlb_jax.methods import BUILT_ON_UNIMODAL

    return any(m == "unimodal" or m in BUILT_ON_UNIMODAL for m in methods)


def run_all(config, workdir: paths.PathLike, methods: list[str], seeds: list[int]) -> dict:
    """Runs (or reuses) every row x seed of `plan_rows`; returns row -> list of results.

    A method built on unimodal runs gets this comparison's unimodal runs of the same seed.
    """
    workdir = paths.as_path(workdir)
    from mlb_jax.evaluate import EVALUATION_FILE
    from mlb_jax.methods import BUILT_ON_UNIMODAL
    from mlb_jax.trainer import (
        RESULTS_FILE,
        load_dataset,
        modalities_from_dataset,
        train_and_evaluate,
    )

    if needs_unimodal(methods) and not len(config.model.modalities):  # left to the dataset
        config = modalities_from_dataset(config, load_dataset(config))
    modalities = list(config.model.modalities) if needs_unimodal(methods) else []
    results: dict[str, list[dict]] = {}
    for row, method, modality in plan_rows(methods, modalities):
        for seed in seeds:
            run_dir = workdir / row / f"seed_{seed}"
            done = run_dir / RESULTS_FILE
            if done.exists():
                res = json.loads(done.read_text())
                print(f"{row} seed {seed}: done earlier ({100 * res['accuracy']:.1f})")
            else:
                print(f"=== {row} seed {seed} -> {run_dir}", flush=True)
                cfg = config.copy_and_resolve_references()
                with cfg.unlocked():
                    cfg.method.name = method
                    cfg.seed = seed
                    if modality:
                        cfg.method.modality = modality
                    unimodal_runs = {
                        m: str(workdir / f"unimodal_{m}" / f"seed_{seed}") for m in modalities
                    }
                    if method in BUILT_ON_UNIMODAL:
                        cfg.method[BUILT_ON_UNIMODAL[method]].workdirs = unimodal_runs
                    if modalities and not modality and "evaluate" in cfg:
                        # The agreement matrices' reference: this seed's unimodal runs.
                        cfg.evaluate.unimodal_workdirs = unimodal_runs
                res = train_and_evaluate(cfg, run_dir)
            evaluation = run_dir / EVALUATION_FILE
            if evaluation.exists():  # kept beside results.json, not in it
                res = {**res, "evaluation": json.loads(evaluation.read_text())}
            results.setdefault(row, []).append(res)
    return results


def _evaluation(result: dict, *keys: str) -> float:
    """A number of a run's evaluation.json by its keys; NaN where the run has none."""
    node = result.get("evaluation")
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return float("nan")
        node = node[key]
    return float("nan") if node is None else float(node)


def summarise(results: dict[str, list[dict]]) -> tuple[dict, list[str]]:
    """Row -> metric -> (mean, std) over seeds, and the metric names in table order.

    A modality a row has no number for (the other modality of a unimodal run) is NaN.
    """
    modalities = list(
        dict.fromkeys(m for runs in results.values() for m in runs[0]["unimodal_accuracy"])
    )
    nan = float("nan")
    evaluated = any("evaluation" in r for runs in results.values() for r in runs)
    columns = {"fused": lambda r: r["accuracy"]}
    if evaluated:
        columns["macro-F1"] = lambda r: _evaluation(r, "heads", "fused", "macro_f1")
    for m in modalities:
        columns[f"{m} (unimodal head)"] = lambda r, m=m: r["unimodal_accuracy"].get(m, nan)
    for m in modalities:
        columns[f"{m} (probe)"] = lambda r, m=m: r["probe_accuracy"].get(m, nan)
    columns["ECE"] = lambda r: r["ece"]
    if evaluated:
        for m in modalities:
            columns[f"Shapley {m}"] = lambda r, m=m: _evaluation(r, "subsets", "shapley", m)
        columns["imbalance"] = lambda r: _evaluation(r, "subsets", "imbalance_index")
    table = {
        method: {name: _mean_std([f(r) for r in runs]) for name, f in columns.items()}
        for method, runs in results.items()
    }
    return table, list(columns)


def _mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, std) over seeds; NaN if any seed lacks the number (never a partial mean)."""
    return float(np.mean(values)), float(np.std(values))


# Columns shown as fractions (the rest in %; Shapley values in accuracy points, signed).
FRACTION_COLUMNS = ("ECE", "imbalance")


def evaluation_tables(results: dict[str, list[dict]]) -> str:
    """Markdown tables of the runs' evaluation.json over seeds: subsets, noise, agreement.

    Rows without an evaluation or without the part (unimodal runs have no subsets, ensembles
    no noise curves) are left out; every cell is mean ± std over seeds in %.
    """
    evaluated = {
        row: [r["evaluation"] for r in runs]
        for row, runs in results.items()
        if all("evaluation" in r for r in runs)
    }
    out = []

    def table(title: str, part: str, cells) -> None:
        rows = {row: evs for row, evs in evaluated.items() if all(part in e for e in evs)}
        if not rows:
            return
        header = cells(next(iter(rows.values()))[0])
        out.extend(["", f"### {title}", "", "| method | " + " | ".join(header) + " |"])
        out.append("|---" * (len(header) + 1) + "|")
        for row, evs in rows.items():
            values = [cells(e) for e in evs]
            texts = []
            for key in header:
                vals = [v.get(key, float("nan")) for v in values]
                vals = [float("nan") if x is None else x for x in vals]
                mean, std = _mean_std(vals)
                texts.append("—" if np.isnan(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}")
            out.append(f"| {row} | " + " | ".join(texts) + " |")

    table(
        "Fused accuracy per modality subset (absent modalities replaced)",
        "subsets",
        lambda e: e["subsets"]["accuracy"],
    )
    table(
        "Fused accuracy with Gaussian noise on one modality (sigma in input stds)",
        "robustness",
        lambda e: {
            f"{m} σ={level:g}": acc
            for m, curve in e["robustness"]["accuracy"].items()
            for level, acc in zip(e["robustness"]["levels"], curve, strict=True)
        },
    )
    table(
        "Fused accuracy per correctness pattern of the unimodal references",
        "agreement",
        lambda e: {p["pattern"]: p["fused_accuracy"] for p in e["agreement"]["patterns"]},
    )
    return "\n".join(out) + "\n" if out else ""


def markdown_table(table: dict, columns: list[str], seeds: list[int]) -> str:
    """The comparison as a Markdown table (accuracies in %, ECE as a fraction)."""
    head = "| method | " + " | ".join(columns) + " |"
    rule = "|---" * (len(columns) + 1) + "|"
    rows = []
    for method, row in table.items():
        cells = []
        for c in columns:
            mean, std = row[c]
            if np.isnan(mean):
                cells.append("—")
            elif c in FRACTION_COLUMNS:
                cells.append(f"{mean:.3f} ± {std:.3f}")
            elif c.startswith("Shapley "):
                cells.append(f"{100 * mean:+.1f} ± {100 * std:.1f}")
            else:
                cells.append(f"{100 * mean:.1f} ± {100 * std:.1f}")
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    note = f"\nTest split, best-on-validation epoch, mean ± std over seeds {seeds}.\n"
    if any(c.startswith("Shapley ") for c in columns):
        note += (
            "macro-F1 of the fused head; Shapley: each modality's exact Shapley value with "
            "fused accuracy over modality subsets as the value function (accuracy points); "
            "imbalance: 0 = equal contributions, 1 = one modality alone (mlb_jax/attribution.py)."
            "\n"
        )
    return "\n".join([head, rule, *rows]) + "\n" + note


def main(argv: list[str]) -> None:
    """Runs the comparison and writes comparison.md and comparison.png."""
    del argv  # `parse_flags` refuses positional arguments
    from mlb_jax.runtime import DEFAULT_COMPILATION_CACHE, fail, setup_process

    try:
        methods = expand_methods(list(_METHODS.value))
    except ValueError as err:
        fail(str(err))
    if not methods:
        fail("--methods is empty: name at least one method, e.g. --methods=joint,mlb")
    setup_process(distributed=False, compilation_cache=DEFAULT_COMPILATION_CACHE)
    workdir = paths.as_path(_WORKDIR.value)
    seeds = list(_SEEDS.value)
    try:
        results = run_all(_CONFIG.value, workdir, methods, seeds)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as err:
        fail(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))
    print(write_comparison(results, seeds, workdir, _CONFIG.value.data.name))


def write_comparison(
    results: dict[str, list[dict]],
    seeds: list[int],
    workdir: paths.PathLike,
    name: str,
    preface: str = "",
    extra: dict | None = None,
) -> str:
    """Writes comparison.md / .json and the figures of `results` into `workdir`.

    Args:
      results: row -> one result per seed (`run_all`).
      seeds: the seeds, in the order of each row's results.
      workdir: the comparison directory (created if missing; a local path or a URL).
      name: the dataset's name, for the figures' titles.
      preface: Markdown put before the table (e.g. the tuning budget).
      extra: more entries of comparison.json (e.g. the tuned settings).

    Returns:
      The text of comparison.md.
    """
    from mlb_jax.plots import plot_comparison
    from mlb_jax.trainer import write_json_atomic

    workdir = paths.as_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    table, columns = summarise(results)
    text = preface + markdown_table(table, columns, seeds) + evaluation_tables(results)
    paths.write_atomic(workdir / "comparison.md", text)
    write_json_atomic(
        workdir / "comparison.json", {"table": table, "results": results, **(extra or {})}
    )
    plot_comparison(
        table,
        [c for c in columns if c not in FRACTION_COLUMNS and not c.startswith("Shapley ")],
        workdir / "comparison.png",
        title=f"{name}: test accuracy, mean ± std over {len(seeds)} seeds",
    )
    plot_comparison_figures(results, table, columns, workdir, name, len(seeds))
    return text


def plot_comparison_figures(
    results: dict, table: dict, columns: list[str], workdir: epath.Path, name: str, n: int
) -> None:
    """comparison_ece.png, and from the evaluations comparison_shapley / _robustness.png."""
    from mlb_jax.plots import plot_comparison, plot_metric_bars, plot_robustness

    plot_metric_bars(
        {row: values["ECE"] for row, values in table.items()},
        workdir / "comparison_ece.png",
        ylabel="ECE (15 bins)",
        title=f"{name}: expected calibration error, mean ± std over {n} seeds",
    )
    shapley = [c for c in columns if c.startswith("Shapley ")]
    rows = {r: v for r, v in table.items() if not np.isnan(v[shapley[0]][0])} if shapley else {}
    if rows:
        plot_comparison(
            rows,
            shapley,
            workdir / "comparison_shapley.png",
            title=f"{name}: Shapley value per modality (accuracy points)",
            ylabel="Shapley value (accuracy points)",
        )
    curves = {}
    for row, runs in results.items():
        evs = [r.get("evaluation", {}).get("robustness") for r in runs]
        if evs and all(evs):
            for m in evs[0]["accuracy"]:
                stack = np.array([e["accuracy"][m] for e in evs], np.float64)
                curves[f"{row}, noise on {m}"] = (stack.mean(axis=0), stack.std(axis=0))
            levels = evs[0]["levels"]
    if curves:
        plot_robustness(
            {"levels": levels, "accuracy": curves},
            workdir / "comparison_robustness.png",
            title=f"{name}: fused accuracy under noise, mean ± std over {n} seeds",
        )


if __name__ == "__main__":
    from mlb_jax.runtime import parse_flags, relaunch

    relaunch()  # huge pages for XLA's buffers (mlb_jax.allocator), before anything else
    app.run(main, flags_parser=parse_flags)
