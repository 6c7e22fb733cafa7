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
std over seeds of fused test accuracy, unimodal and probe accuracy per modality, and ECE.
"""

import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np
from absl import app, flags
from ml_collections import config_flags

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


def run_all(config, workdir: pathlib.Path, methods: list[str], seeds: list[int]) -> dict:
    """Runs (or reuses) every row x seed of `plan_rows`; returns row -> list of results.

    A method built on unimodal runs gets this comparison's unimodal runs of the same seed.
    """
    from mlb_jax.methods import BUILT_ON_UNIMODAL
    from mlb_jax.trainer import RESULTS_FILE, train_and_evaluate

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
                    if method in BUILT_ON_UNIMODAL:
                        cfg.method[BUILT_ON_UNIMODAL[method]].workdirs = {
                            m: str(workdir / f"unimodal_{m}" / f"seed_{seed}") for m in modalities
                        }
                res = train_and_evaluate(cfg, run_dir)
            results.setdefault(row, []).append(res)
    return results


def summarise(results: dict[str, list[dict]]) -> tuple[dict, list[str]]:
    """Row -> metric -> (mean, std) over seeds, and the metric names in table order.

    A modality a row has no number for (the other modality of a unimodal run) is NaN.
    """
    modalities = list(
        dict.fromkeys(m for runs in results.values() for m in runs[0]["unimodal_accuracy"])
    )
    nan = float("nan")
    columns = {"fused": lambda r: r["accuracy"]}
    for m in modalities:
        columns[f"{m} (unimodal head)"] = lambda r, m=m: r["unimodal_accuracy"].get(m, nan)
    for m in modalities:
        columns[f"{m} (probe)"] = lambda r, m=m: r["probe_accuracy"].get(m, nan)
    columns["ECE"] = lambda r: r["ece"]
    table = {
        method: {
            name: (float(np.mean([f(r) for r in runs])), float(np.std([f(r) for r in runs])))
            for name, f in columns.items()
        }
        for method, runs in results.items()
    }
    return table, list(columns)


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
            elif c == "ECE":
                cells.append(f"{mean:.3f} ± {std:.3f}")
            else:
                cells.append(f"{100 * mean:.1f} ± {100 * std:.1f}")
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    note = f"\nTest split, best-on-validation epoch, mean ± std over seeds {seeds}.\n"
    return "\n".join([head, rule, *rows]) + "\n" + note


def main(argv: list[str]) -> None:
    """Runs the comparison and writes comparison.md and comparison.png."""
    del argv  # `parse_flags` refuses positional arguments
    from mlb_jax.plots import plot_comparison
    from mlb_jax.runtime import DEFAULT_COMPILATION_CACHE, fail, setup_process
    from mlb_jax.trainer import write_json_atomic

    try:
        methods = expand_methods(list(_METHODS.value))
    except ValueError as err:
        fail(str(err))
    if not methods:
        fail("--methods is empty: name at least one method, e.g. --methods=joint,mlb")
    setup_process(distributed=False, compilation_cache=DEFAULT_COMPILATION_CACHE)
    workdir = pathlib.Path(_WORKDIR.value)
    seeds = list(_SEEDS.value)
    try:
        results = run_all(_CONFIG.value, workdir, methods, seeds)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as err:
        fail(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))
    workdir.mkdir(parents=True, exist_ok=True)
    table, columns = summarise(results)
    text = markdown_table(table, columns, seeds)
    tmp = workdir / "comparison.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, workdir / "comparison.md")
    write_json_atomic(workdir / "comparison.json", {"table": table, "results": results})
    plot_comparison(
        table,
        [c for c in columns if c != "ECE"],
        workdir / "comparison.png",
        title=f"{_CONFIG.value.data.name}: test accuracy, mean ± std over {len(seeds)} seeds",
    )
    print(text)


if __name__ == "__main__":
    from mlb_jax.runtime import parse_flags

    app.run(main, flags_parser=parse_flags)
