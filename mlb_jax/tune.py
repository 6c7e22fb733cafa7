"""Fair tuning: every method searched on validation with the same trial budget, then compared.

    python -m mlb_jax.tune --config=configs/synthetic_av.py --methods=joint,multiloss,mlb \
        --trials=8 --seeds=0,1,2 --workdir=runs/tune

The paper's protocol: hyper-parameters tuned "separately for each method ... on the validation
set" with "an equal number of trials for each configuration".

1. Each method's search space is declared next to its settings (`Method.search_space` in
   mlb_jax/methods/: every method tunes the learning rate around the config's; MLB adds alpha,
   beta_max and placement, OGM its alpha, ...). ``--space=METHOD:SETTING=SPEC`` adds or
   replaces a dimension (SPEC: ``log:LOW:HIGH``, ``scaled:LOW:HIGH`` or ``A|B|C``), e.g.
   ``--space=mlb:beta_max=2|4|8`` or ``--space=joint:train.weight_decay=log:1e-5:1e-3``.
2. ``--trials`` N per method, the same N for every method: trial 0 is the config's own setting,
   trials 1..N-1 are scrambled Halton points (seeded by the first seed) mapped through the
   dimensions. Each trial trains on the first seed with the test split replaced by the
   validation split and the end-of-run evaluation off, so tuning never opens the test split.
   Trial i is an ordinary run directory, ``<workdir>/<method>/trial_<i>``.
3. The trial with the highest validation accuracy (of its best epoch; ties go to the lower
   trial) is chosen: ``<workdir>/<method>/tuning.json``, ``tuning.md``, ``tuning.png``.
4. The chosen setting is retrained on every seed (``<workdir>/<method>/seed_<s>``, as the
   compare runner does) and reported on test in ``<workdir>/comparison.md`` with the budget.

Resumable: a trial or seed run whose results.json exists is not repeated, an interrupted one
resumes from its checkpoint; raising --trials later adds trials (the first points of the Halton
sequence do not change). Trials run one after another, or with ``--batch_trials`` those of a
method that share their non-float settings as one program (mlb_jax.sweep, each trial with its
own floats; opt-in: on a 2-core CPU the program's compile time outweighs its per-step gain at
the demo's scale, README "Seeds in one program: sweeps").
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import app, flags
from etils import epath
from scipy.stats import qmc

from mlb_jax import compare, paths, recipes
from mlb_jax.methods.space import Dimension, parse_dimension

# --config, --workdir, --methods and --seeds are the compare runner's flags (mlb_jax/compare.py).
_TRIALS = flags.DEFINE_integer(
    "trials", 8, "trials per method, the same for every method", lower_bound=1
)
_BATCH_TRIALS = flags.DEFINE_bool(
    "batch_trials",
    False,
    "train each method's trials that share their non-float settings as one program "
    "(mlb_jax.sweep, unrolled); on a 2-core CPU its compile time outweighs the gain at demo scale",
)
_SPACE = flags.DEFINE_multi_string(
    "space",
    [],
    "METHOD:SETTING=SPEC adds or replaces a search dimension; SPEC: log:LOW:HIGH, "
    "scaled:LOW:HIGH (times the config's value) or A|B|C, e.g. mlb:beta_max=2|4|8",
)

TUNING_FILE = "tuning.json"
# Rows that train one modality or combine other runs: compare them with mlb_jax.compare.
NOT_TUNED = ("unimodal", "ensemble", "pre_frozen", "pre_finetuned")

Setting = dict[str, Any]  # config path (e.g. 'method.alpha') -> value


def parse_space_flags(items: Sequence[str]) -> dict[str, dict[str, Dimension]]:
    """--space values -> method -> setting -> dimension.

    Raises:
      ValueError: naming the --space value, for a malformed one.
    """
    out: dict[str, dict[str, Dimension]] = {}
    for item in items:
        target, eq, spec = item.partition("=")
        method, colon, setting = target.partition(":")
        if not (eq and colon and method and setting):
            raise ValueError(
                f"--space={item!r}: write METHOD:SETTING=SPEC, e.g. --space=mlb:alpha=log:0.5:5"
            )
        try:
            out.setdefault(method, {})[setting] = parse_dimension(spec)
        except ValueError as err:
            raise ValueError(f"--space={item!r}: {err}") from None
    return out


def method_config(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
    """A copy of `config` set to train `method`."""
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.method.name = method
    return cfg


def search_space(
    config: ml_collections.ConfigDict, method: str, extra: Mapping[str, Dimension] | None = None
) -> dict[str, Dimension]:
    """The config paths `method` is tuned over and their dimensions.

    Args:
      config: the experiment config.
      method: a registered method name.
      extra: setting -> dimension, added to (or replacing) the method's declared space.

    Returns:
      config path (e.g. 'method.alpha', 'method.ogm.alpha', 'train.lr') -> dimension.

    Raises:
      ValueError: naming the hyper-parameter, for a setting the method does not read, a
        config path the config lacks, or a method that is not tuned here.
    """
    from mlb_jax.methods import make_method

    if method in NOT_TUNED:
        raise ValueError(
            f"method {method!r} is not tuned (it trains one modality or combines finished runs): "
            "compare it with python -m mlb_jax.compare"
        )
    built = make_method(method_config(config, method).method)
    cls = type(built)
    settings = [f for f in (*cls.top_level_fields, *cls.block_fields) if f != "modality"]
    out = {}
    for key, dim in {**cls.search_space, **(extra or {})}.items():
        if "." in key:
            if key == "seed" or key.startswith("method."):
                raise ValueError(
                    f"hyper-parameter {key!r} of method {method!r}: name a method setting by "
                    f"its field ({', '.join(settings)}); seeds come from --seeds"
                )
            try:
                recipes.get_field(config, key)
            except KeyError:
                raise ValueError(
                    f"unknown hyper-parameter {key!r} of method {method!r}: the config has no "
                    "field config." + key
                ) from None
            out[key] = dim
        elif key in settings:
            out[built.setting_path(key).removeprefix("config.")] = dim
        else:
            raise ValueError(
                f"unknown hyper-parameter {key!r} of method {method!r}: tune one of its settings "
                f"({', '.join(settings) or 'none'}) or a config path such as train.lr"
            )
    return out


def trial_settings(
    space: Mapping[str, Dimension], defaults: Setting, trials: int, seed: int
) -> list[Setting]:
    """The settings of `trials` trials: the config's own first, then scrambled Halton points.

    Args:
      space: config path -> dimension.
      defaults: config path -> the config's value (what trial 0 uses; `Scaled` scales it).
      trials: how many settings (>= 1).
      seed: seeds the Halton scrambling; the first k of n points do not depend on n.

    Returns:
      `trials` dicts config path -> value.
    """
    settings = [dict(defaults)]
    if trials > 1:
        points = qmc.Halton(d=len(space), scramble=True, seed=seed).random(trials - 1)
        for point in points:
            settings.append(
                {
                    path: dim.value(float(u), defaults[path])
                    for (path, dim), u in zip(space.items(), point, strict=True)
                }
            )
    return settings


def apply_setting(
    config: ml_collections.ConfigDict, method: str, setting: Setting, seed: int
) -> ml_collections.ConfigDict:
    """A copy of `config` training `method` on `seed` with `setting` applied."""
    cfg = method_config(config, method)
    with cfg.unlocked():
        cfg.seed = seed
        for path, value in setting.items():
            recipes.set_field(cfg, path, value)
    return cfg


def trial_config(
    config: ml_collections.ConfigDict, method: str, setting: Setting, seed: int
) -> ml_collections.ConfigDict:
    """`apply_setting`, with the validation split standing in for the test split.

    The trial's results.json then reports validation numbers only, and no evaluation runs:
    selection never reads the test split.
    """
    cfg = apply_setting(config, method, setting, seed)
    with cfg.unlocked():
        cfg.data.test_split = cfg.data.val_split
        if "evaluate" in cfg:
            cfg.evaluate.enabled = False
    return cfg


def check_stored_setting(run_dir: epath.Path, setting: Setting) -> None:
    """Refuses a run directory whose config.json was trained with another setting.

    Raises:
      ValueError: naming the directory and the first differing config path.
    """
    from mlb_jax.trainer import CONFIG_FILE

    stored = run_dir / CONFIG_FILE
    if not stored.exists():
        return
    doc = json.loads(stored.read_text())
    for path, value in setting.items():
        try:
            old = recipes.get_field(doc, path)
        except KeyError:
            old = None
        if old != value:
            raise ValueError(
                f"{run_dir} was trained with {path}={old!r}, but this tuning asks for {value!r} "
                "(another --space, --trials seed or config?): use a new --workdir or delete it"
            )


def train_trials_together(
    config: ml_collections.ConfigDict,
    method: str,
    method_dir: epath.Path,
    settings: list[Setting],
    seed: int,
) -> None:
    """Trains the unfinished trials of `method` as sweeps, one per group of shared settings.

    Trials whose non-float values (e.g. MLB's placement) agree form one `mlb_jax.sweep`
    program, each member with its own floats, in `<method_dir>/trial_<i>`; the configs equal
    what `trial_config` gives each trial alone.
    """
    from mlb_jax import sweep
    from mlb_jax.trainer import RESULTS_FILE

    groups: dict[tuple, list[int]] = {}
    for i, setting in enumerate(settings):
        if not (method_dir / f"trial_{i}" / RESULTS_FILE).exists():
            shared = tuple((p, v) for p, v in setting.items() if not isinstance(v, float))
            groups.setdefault(shared, []).append(i)
    for shared, indices in groups.items():
        print(f"=== {method} trials {indices} in one program ({_describe(dict(shared))})")
        members = [
            (
                f"trial_{i}",
                seed,
                {p: v for p, v in settings[i].items() if isinstance(v, float)},
            )
            for i in indices
        ]
        base = trial_config(config, method, dict(shared), seed)
        sweep.train_members(base, method_dir, members)


def run_trials(
    config: ml_collections.ConfigDict,
    method: str,
    workdir: paths.PathLike,
    trials: int,
    seed: int,
    extra: Mapping[str, Dimension] | None = None,
    batch: bool = False,
) -> tuple[dict[str, Dimension], list[dict]]:
    """Trains (or reuses) every trial of `method`; returns its space and the trial records.

    Args:
      config: the experiment config.
      method: the method to tune.
      workdir: the tuning directory; trial i lives in `<workdir>/<method>/trial_<i>`.
      trials: trials per method.
      seed: the trials' training seed and the Halton seed.
      extra: setting -> dimension added to the method's space (`search_space`).
      batch: train the trials together (`train_trials_together`) instead of one by one.

    Returns:
      (space, records): records[i] = {'trial': i, 'setting': {path: value}, 'val_accuracy',
      'best_epoch', 'train_seconds'} (validation accuracy of the best epoch, a fraction).
    """
    from mlb_jax.trainer import RESULTS_FILE, train_and_evaluate

    workdir = paths.as_path(workdir)
    space = search_space(config, method, extra)
    resolved, _ = recipes.resolve(method_config(config, method))
    defaults = {path: recipes.get_field(resolved, path) for path in space}
    settings = trial_settings(space, defaults, trials, seed)
    for i, setting in enumerate(settings):
        check_stored_setting(workdir / method / f"trial_{i}", setting)
    if batch:
        train_trials_together(config, method, workdir / method, settings, seed)
    records = []
    for i, setting in enumerate(settings):
        run_dir = workdir / method / f"trial_{i}"
        if (run_dir / RESULTS_FILE).exists():
            res = json.loads((run_dir / RESULTS_FILE).read_text())
            print(f"{method} trial {i}: done earlier ({100 * res['val_accuracy']:.1f})")
        else:
            print(f"=== {method} trial {i}/{trials}: {_describe(setting)} -> {run_dir}", flush=True)
            res = train_and_evaluate(trial_config(config, method, setting, seed), run_dir)
        records.append(
            {
                "trial": i,
                "setting": setting,
                "val_accuracy": res["val_accuracy"],
                "best_epoch": res["best_epoch"],
                "train_seconds": res["train_seconds"],
            }
        )
    return space, records


def choose(records: Sequence[Mapping[str, Any]]) -> int:
    """The index of the trial with the highest validation accuracy (the first on ties)."""
    return max(range(len(records)), key=lambda i: (records[i]["val_accuracy"], -i))


def _describe(setting: Setting) -> str:
    """'method.alpha=1.23, train.lr=0.0045' (4 significant digits)."""
    return ", ".join(
        f"{path}={value:.4g}" if isinstance(value, float) else f"{path}={value}"
        for path, value in setting.items()
    )


def write_tuning(
    method_dir: epath.Path,
    method: str,
    space: Mapping[str, Dimension],
    records: list[dict],
    seed: int,
) -> int:
    """Writes tuning.json, tuning.md and tuning.png of one method; returns the chosen trial."""
    from mlb_jax.plots import plot_tuning
    from mlb_jax.trainer import write_json_atomic

    chosen = choose(records)
    write_json_atomic(
        method_dir / TUNING_FILE,
        {
            "method": method,
            "seed": seed,
            "space": {path: repr(dim) for path, dim in space.items()},
            "trials": records,
            "chosen": chosen,
            "setting": records[chosen]["setting"],
        },
    )
    names = list(space)
    lines = [
        f"# {method}: {len(records)} trials, seed {seed}, selected on validation accuracy",
        "",
        "| trial | " + " | ".join(names) + " | validation accuracy | best epoch | |",
        "|---" * (len(names) + 4) + "|",
    ]
    for r in records:
        cells = [
            f"{r['setting'][n]:.4g}" if isinstance(r["setting"][n], float) else str(r["setting"][n])
            for n in names
        ]
        mark = "chosen" if r["trial"] == chosen else ""
        lines.append(
            f"| {r['trial']} | "
            + " | ".join(cells)
            + f" | {100 * r['val_accuracy']:.1f} | {r['best_epoch']} | {mark} |"
        )
    lines += ["", "Search space: " + "; ".join(f"{p}: {d!r}" for p, d in space.items()), ""]
    paths.write_atomic(method_dir / "tuning.md", "\n".join(lines))
    plot_tuning(
        records,
        {path: dim.log_scale for path, dim in space.items()},
        chosen,
        method_dir / "tuning.png",
        title=f"{method}: validation accuracy per trial (star: chosen)",
    )
    return chosen


def tune_all(
    config: ml_collections.ConfigDict,
    workdir: paths.PathLike,
    methods: list[str],
    trials: int,
    seeds: list[int],
    extra: Mapping[str, Mapping[str, Dimension]] | None = None,
    batch: bool = False,
) -> tuple[dict[str, list[dict]], dict[str, Setting]]:
    """Tunes every method on validation, then trains the chosen settings on every seed.

    Args:
      config: the experiment config.
      workdir: the tuning directory.
      methods: the methods to tune (each with the same number of trials).
      trials: trials per method.
      seeds: the final runs' seeds; the first also trains the trials.
      extra: method -> setting -> dimension added to its space (--space).
      batch: train each method's trials together (`train_trials_together`).

    Returns:
      (results, chosen): method -> one test result per seed (as `compare.run_all`), and
      method -> the chosen setting.

    Raises:
      ValueError: a method that is not tuned, or an unknown hyper-parameter (before anything
        trains), or a finished run trained with another setting.
    """
    workdir = paths.as_path(workdir)
    extra = extra or {}
    unknown = sorted(set(extra) - set(methods))
    if unknown:
        raise ValueError(f"--space names {', '.join(unknown)}, which --methods does not tune")
    for method in methods:  # every space is checked before the first trial trains
        search_space(config, method, extra.get(method))
    results: dict[str, list[dict]] = {}
    chosen: dict[str, Setting] = {}
    for method in methods:
        space, records = run_trials(
            config, method, workdir, trials, seeds[0], extra.get(method), batch
        )
        best = write_tuning(workdir / method, method, space, records, seeds[0])
        chosen[method] = records[best]["setting"]
        print(f"{method}: trial {best} chosen ({_describe(chosen[method])})", flush=True)
        for seed in seeds:
            check_stored_setting(workdir / method / f"seed_{seed}", chosen[method])
        tuned = apply_setting(config, method, chosen[method], seeds[0])
        results.update(compare.run_all(tuned, workdir, [method], seeds))
    return results, chosen


def main(argv: list[str]) -> None:
    """Tunes, retrains and writes comparison.md with the budget and the chosen settings."""
    del argv  # `parse_flags` refuses positional arguments
    from mlb_jax.runtime import DEFAULT_COMPILATION_CACHE, fail, setup_process

    args = flags.FLAGS
    started = time.monotonic()
    try:
        methods = compare.expand_methods(list(args.methods))
        extra = parse_space_flags(_SPACE.value)
    except ValueError as err:
        fail(str(err))
    setup_process(distributed=False, compilation_cache=DEFAULT_COMPILATION_CACHE)
    workdir = paths.as_path(args.workdir)
    seeds = list(args.seeds)
    try:
        results, chosen = tune_all(
            args.config, workdir, methods, _TRIALS.value, seeds, extra, _BATCH_TRIALS.value
        )
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as err:
        fail(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))
    minutes = (time.monotonic() - started) / 60
    preface = (
        f"Tuned on the validation split: {_TRIALS.value} trials per method (seed {seeds[0]}; "
        f"trial 0 = the config's setting), the chosen setting retrained on seeds {seeds}. "
        f"Wall time of this invocation: {minutes:.1f} min.\n\n"
        + "".join(f"- {m}: {_describe(s)}\n" for m, s in chosen.items())
        + "\n"
    )
    text = compare.write_comparison(
        results,
        seeds,
        workdir,
        args.config.data.name,
        preface=preface,
        extra={"chosen": chosen, "trials_per_method": _TRIALS.value},
    )
    print(text)


if __name__ == "__main__":
    from mlb_jax.runtime import parse_flags, relaunch

    relaunch()  # huge pages for XLA's buffers (mlb_jax.allocator), before anything else
    app.run(main, flags_parser=parse_flags)
