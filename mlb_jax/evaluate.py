"""Evaluation of a trained run: `python -m mlb_jax.evaluate --workdir=RUN`.

    python -m mlb_jax.evaluate --workdir=runs/demo [--split=test] [--checkpoint=best|latest]

restores the run's best (or latest) checkpoint and writes into the run directory
`evaluation.json`, `evaluation.md` and the figures `eval_confusion.png`,
`eval_calibration.png`, `eval_subsets.png`, `eval_robustness.png`, `eval_agreement.png`. The
trainer runs the same evaluation (`evaluate_run`) at the end of every run, on the test split
and the best checkpoint, unless `config.evaluate.enabled` is False.

What is measured (settings in `config.evaluate`, see mlb_jax/config_base.py):

* per head (the fused one and each unimodal head): accuracy, macro-F1, Cohen's kappa, top-5
  accuracy (K > 5), per-class precision / recall / F1, the confusion matrix, ECE (15 bins),
  class-wise ECE and the reliability diagram (`mlb_jax.metrics`);
* modality subsets: fused accuracy of all 2^M - 1 non-empty subsets (and of none), an absent
  modality replaced by a zero or training-mean input, in one jitted pass
  (`mlb_jax.evaluation_passes`); the exact Shapley value of each modality with fused accuracy
  as the value function, and the imbalance index (`mlb_jax.attribution`);
* robustness: fused accuracy with Gaussian noise of increasing strength on one modality at
  a time (strength in units of the modality's training input standard deviation);
* agreement (the paper's Figure 4): per correctness pattern of reference unimodal models
  (`config.evaluate.unimodal_workdirs`, finished `unimodal` runs; else the run's own unimodal
  heads, labelled so), the number of examples and the fused accuracy among them.

Subsets and noise go through `Method.fuse`, the method's own fusion of features, so methods
whose forward pass fuses differently (MMCosine, ReconBoost) are measured as they predict. A
method whose eval-mode logits are not a function of the encoders' pooled features alone
would need its own `fuse`; every registered method's is checked against its `forward` in
tests/test_evaluation.py. Ensemble runs (method 'ensemble') are evaluated from their members'
best checkpoints (`evaluate_ensemble_outputs`): the same heads, subsets (each the ensemble of
its members alone) and agreement (with the members), no noise curves.
"""

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np
from etils import epath

from mlb_jax import attribution, metrics, paths

EVALUATION_FILE = "evaluation.json"
REPORT_FILE = "evaluation.md"
FIGURES = {
    "confusion": "eval_confusion.png",
    "calibration": "eval_calibration.png",
    "subsets": "eval_subsets.png",
    "robustness": "eval_robustness.png",
    "agreement": "eval_agreement.png",
}
CHECKPOINTS = ("best", "latest")
# evaluation.json's subsets.absent -> evaluation.md's words.
ABSENT_TEXT = {
    "zeros": "zero input",
    "mean": "training-mean input",
    "left_out": "its member left out of the ensemble",
}

__all__ = [
    "CHECKPOINTS",
    "EVALUATION_FILE",
    "FIGURES",
    "REPORT_FILE",
    "EvalSettings",
    "evaluate_ensemble_outputs",
    "evaluate_run",
    "evaluate_workdir",
    "head_metrics",
    "markdown_report",
    "write_evaluation",
]


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """`config.evaluate` (defaults here serve configs and runs written before it existed).

    Attributes:
      enabled: the trainer evaluates at the end of every run.
      absent: an absent modality's input in the subset pass: 'zeros' | 'mean' (training mean).
      noise_levels: noise strengths, in units of each modality's input std (() = no curves).
      noise_seed: seed of the noise draws.
      stats_examples: training examples sampled for the input mean and std.
      calibration_bins: equal-width confidence bins of ECE and the reliability diagrams.
      unimodal_workdirs: modality -> finished `unimodal` run serving as the agreement
        reference ('' for every modality: the run's own unimodal heads).
    """

    enabled: bool = True
    absent: str = "zeros"
    noise_levels: tuple[float, ...] = (0.5, 1.0, 2.0)
    noise_seed: int = 0
    stats_examples: int = 256
    calibration_bins: int = 15
    unimodal_workdirs: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Any) -> "EvalSettings":
        """Reads `config.evaluate` (absent or partial: defaults) and checks every field.

        Raises:
          ValueError: naming the config field.
        """
        block = config.get("evaluate", None)
        block = (
            {} if block is None else dict(block.to_dict() if hasattr(block, "to_dict") else block)
        )
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(block) - fields)
        if unknown:
            raise ValueError(
                f"config.evaluate has unknown field(s) {unknown}; known: {sorted(fields)}"
            )
        if "noise_levels" in block:
            block["noise_levels"] = tuple(block["noise_levels"])
        if "unimodal_workdirs" in block:
            block["unimodal_workdirs"] = dict(block["unimodal_workdirs"] or {})
        settings = cls(**block)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raises ValueError naming the `config.evaluate` field that is wrong."""
        from mlb_jax.evaluation_passes import ABSENT_KINDS

        if not isinstance(self.enabled, bool):
            raise ValueError(f"config.evaluate.enabled must be True or False, got {self.enabled!r}")
        if self.absent not in ABSENT_KINDS:
            raise ValueError(
                f"config.evaluate.absent must be one of {list(ABSENT_KINDS)}, got {self.absent!r}"
            )
        if not all(
            isinstance(x, int | float) and math.isfinite(x) and x > 0 for x in self.noise_levels
        ):
            raise ValueError(
                "config.evaluate.noise_levels must be positive numbers (units of the input "
                f"std), got {self.noise_levels!r}"
            )
        for field in ("stats_examples", "calibration_bins"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"config.evaluate.{field} must be an integer >= 1, got {value!r}")

    def reference_workdirs(self, modalities: list[str]) -> dict[str, str] | None:
        """The reference unimodal runs, or None (own heads) when none is set.

        Raises:
          ValueError: some modalities have a run and others not.
        """
        given = {m: d for m, d in self.unimodal_workdirs.items() if d and m in modalities}
        if not given:
            return None
        missing = [m for m in modalities if m not in given]
        if missing:
            raise ValueError(
                f"config.evaluate.unimodal_workdirs names runs for {sorted(given)} but not for "
                f"{missing}: give one finished unimodal run per modality, or none"
            )
        return {m: given[m] for m in modalities}


# ----------------------------------------------------------------------------- host metrics


def head_metrics(logits: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> dict[str, Any]:
    """Every per-head metric of one head's logits over a split.

    Args:
      logits: [N, K].
      labels: [N] integer labels.
      num_bins: calibration bins.

    Returns:
      {'accuracy', 'macro_f1', 'kappa', 'ece', 'classwise_ece', 'top5_accuracy' (K > 5 only),
      'per_class': {'precision', 'recall', 'f1', 'support'} lists [K], 'confusion' [K][K],
      'reliability': {'count', 'accuracy', 'confidence'} lists [num_bins]}.
    """
    logits = np.asarray(logits)
    k = logits.shape[-1]
    confusion = metrics.confusion_matrix(logits.argmax(axis=-1), labels, k)
    per_class = metrics.per_class_f1(confusion)
    out = {
        "accuracy": metrics.accuracy(logits, labels),
        "macro_f1": metrics.macro_f1(confusion),
        "kappa": metrics.cohen_kappa(confusion),
        "ece": metrics.expected_calibration_error(logits, labels, num_bins),
        "classwise_ece": metrics.classwise_ece(logits, labels, num_bins),
        "per_class": {
            key: per_class[key].tolist() for key in ("precision", "recall", "f1", "support")
        },
        "confusion": confusion.tolist(),
        "reliability": {
            key: value.tolist()
            for key, value in metrics.reliability_bins(logits, labels, num_bins).items()
        },
    }
    if k > 5:
        out["top5_accuracy"] = metrics.top_k_accuracy(logits, labels, 5)
    return out


def subset_summary(
    subset_logits: np.ndarray, labels: np.ndarray, names: list[str]
) -> dict[str, Any]:
    """Accuracy per subset, Shapley values and imbalance index from [2^M, N, K] logits."""
    values = np.array([metrics.accuracy(x, labels) for x in subset_logits])
    phi = attribution.shapley_values(values)
    return {
        "accuracy": {attribution.subset_name(s, names): float(v) for s, v in enumerate(values)},
        "shapley": {m: float(p) for m, p in zip(names, phi, strict=True)},
        "imbalance_index": attribution.imbalance_index(phi),
    }


def agreement_summary(
    reference_logits: Mapping[str, np.ndarray],
    fused_logits: np.ndarray,
    labels: np.ndarray,
    names: list[str],
) -> dict[str, Any]:
    """Agreement-matrix counts and fused accuracy per pattern of the reference models."""
    right = np.stack([np.argmax(reference_logits[m], -1) == labels for m in names], axis=1)
    table = attribution.agreement(right, np.argmax(fused_logits, -1) == labels)
    return {
        "patterns": [
            {
                "pattern": attribution.pattern_name(p, names),
                "right": [m for i, m in enumerate(names) if p >> i & 1],
                "count": int(table["count"][p]),
                "fused_accuracy": _finite(table["fused_accuracy"][p]),
            }
            for p in range(2 ** len(names))
        ],
        "reference_accuracy": {m: float(right[:, i].mean()) for i, m in enumerate(names)},
    }


def _finite(x: float) -> float | None:
    """JSON has no NaN: an undefined value (empty bin or pattern) becomes None."""
    x = float(x)
    return x if math.isfinite(x) else None


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return _finite(obj)
    return obj


# ----------------------------------------------------------------------------- device passes


def _reference_logits(run: Any, workdirs: dict[str, str], split: str) -> dict[str, np.ndarray]:
    """Each reference unimodal run's best-checkpoint logits on `split` (this run's data)."""
    from mlb_jax import trainer
    from mlb_jax.ensemble import restore_unimodal_runs

    field = "config.evaluate.unimodal_workdirs"
    refs, _ = restore_unimodal_runs(workdirs, run.config, run.meta, field)
    return {m: trainer.predict(ref, state, split)["logits"] for m, (ref, state) in refs.items()}


def evaluate_run(
    run: Any,
    state: Any,
    workdir: paths.PathLike,
    *,
    split: str | None = None,
    outputs: dict[str, Any] | None = None,
    checkpoint: str = "best",
) -> dict[str, Any]:
    """Evaluates `state` of `run` on `split`; writes evaluation.json, .md and figures.

    Args:
      run: the `trainer.Run`.
      state: the train state to evaluate (e.g. the best checkpoint).
      workdir: the run directory (outputs are written there by process 0).
      split: split name (default: config.data.test_split).
      outputs: `trainer.predict(run, state, split)` if already computed.
      checkpoint: which checkpoint `state` is ('best' | 'latest'), recorded.

    Returns:
      The evaluation dict written to evaluation.json.
    """
    import jax

    from mlb_jax import evaluation_passes as passes
    from mlb_jax import trainer

    cfg = run.config
    settings = EvalSettings.from_config(cfg)
    split = split or cfg.data.test_split
    names = list(run.modalities)
    seconds: dict[str, float] = {}
    start = time.time()
    if outputs is None:
        outputs = trainer.predict(run, state, split)
    seconds["predict"] = time.time() - start
    labels = outputs["labels"]
    heads = {"fused": outputs["logits"]}
    if run.method.name != "unimodal":  # its one head *is* the fused one
        heads |= outputs["unimodal_logits"]
    bins = settings.calibration_bins
    result: dict[str, Any] = {
        "split": split,
        "checkpoint": checkpoint,
        "method": cfg.method.name,
        "seed": cfg.seed,
        "modalities": names,
        "num_examples": len(labels),
        "num_classes": run.meta.num_classes,
        "heads": {h: head_metrics(x, labels, bins) for h, x in heads.items()},
    }
    start = time.time()
    stats = None
    if settings.absent == "mean" or settings.noise_levels:
        stats = passes.input_statistics(run, cfg.data.train_split, settings.stats_examples)
    seconds["input_statistics"] = time.time() - start
    if len(names) >= 2:
        start = time.time()
        from mlb_jax.data import augment, pipeline

        # The model's input shapes: frames at the evaluation (augment) size.
        shapes = pipeline.input_shapes(run.meta, augment.from_config(cfg.data.get("augment"))[0])
        shapes = {m: shapes[m] for m in names}
        absent = passes.absent_inputs(settings.absent, shapes, stats)
        fn = passes.make_subset_logits(run.graphdef, run.method, names)
        masks = attribution.subset_masks(len(names))
        logits = np.asarray(
            jax.device_get(fn(state, outputs["features"], absent, masks)), np.float32
        )
        result["subsets"] = {"absent": settings.absent, **subset_summary(logits, labels, names)}
        seconds["subsets"] = time.time() - start
    if settings.noise_levels:
        start = time.time()
        step = passes.make_noise_step(
            run.graphdef,
            run.method,
            names,
            settings.noise_levels,
            {m: stats[m]["std"] for m in names},
            settings.noise_seed,
        )
        noisy = trainer.map_split(run, state, split, step)["noise_predictions"]
        clean = metrics.accuracy(outputs["logits"], labels)
        result["robustness"] = {
            "levels": [0.0, *map(float, settings.noise_levels)],
            "unit": "standard deviations of the modality's training inputs",
            "input_std": {m: stats[m]["std"] for m in names},
            "accuracy": {
                m: [
                    clean,
                    *(float(np.mean(noisy[:, i, j] == labels)) for j in range(noisy.shape[2])),
                ]
                for i, m in enumerate(names)
            },
        }
        seconds["robustness"] = time.time() - start
    if len(names) >= 2:
        start = time.time()
        workdirs = settings.reference_workdirs(names)
        if workdirs is None:
            reference = {m: outputs["unimodal_logits"][m] for m in names}
            source = "the run's own unimodal heads"
        else:
            reference = _reference_logits(run, workdirs, split)
            source = "reference unimodal runs"
        result["agreement"] = {
            "reference": source,
            "workdirs": workdirs,
            **agreement_summary(reference, outputs["logits"], labels, names),
        }
        seconds["agreement"] = time.time() - start
    result["seconds"] = seconds
    return write_evaluation(result, workdir)


def evaluate_ensemble_outputs(
    config: Any,
    member_outputs: Mapping[str, Mapping[str, Any]],
    workdir: paths.PathLike,
    *,
    split: str,
    norm: str,
    members: Mapping[str, str],
) -> dict[str, Any]:
    """Evaluates an ensemble of unimodal runs from its members' predictions; writes it.

    The ensemble's heads are its fused logits (`ensemble.combine_logits`) and each member's.
    Its modality subsets are exact: subset S is the ensemble of S's members alone (each
    member normalised as in the full ensemble; the empty subset's logits are all zero, so it
    predicts class 0). The agreement reference is the members themselves. No noise curves:
    a member is a separate run, measured by its own evaluation.

    Args:
      config: the ensemble run's config (its `evaluate` block and `seed`).
      member_outputs: modality -> `trainer.predict` outputs of that member on `split`.
      workdir: the ensemble's run directory.
      split: the split the outputs are of.
      norm: the ensemble's member normalisation ('standardization' | 'none').
      members: modality -> member run directory (recorded).

    Returns:
      The evaluation dict written to evaluation.json.
    """
    from mlb_jax.ensemble import combine_logits

    settings = EvalSettings.from_config(config)
    names = list(member_outputs)
    labels = np.asarray(member_outputs[names[0]]["labels"])
    logits = {m: np.asarray(out["logits"]) for m, out in member_outputs.items()}
    fused = combine_logits(logits, norm)
    heads = {"fused": fused, **logits}
    result: dict[str, Any] = {
        "split": split,
        "checkpoint": "best",  # each member's best-on-validation checkpoint
        "method": config.method.name,
        "seed": config.seed,
        "modalities": names,
        "num_examples": len(labels),
        "num_classes": fused.shape[-1],
        "heads": {h: head_metrics(x, labels, settings.calibration_bins) for h, x in heads.items()},
    }
    if len(names) >= 2:
        subsets = np.stack(
            [
                combine_logits({m: logits[m] for m, on in zip(names, mask) if on}, norm)
                if mask.any()
                else np.zeros_like(fused)
                for mask in attribution.subset_masks(len(names))
            ]
        )
        result["subsets"] = {"absent": "left_out", **subset_summary(subsets, labels, names)}
        result["agreement"] = {
            "reference": "the ensemble's member runs",
            "workdirs": dict(members),
            **agreement_summary(logits, fused, labels, names),
        }
    return write_evaluation(result, workdir)


def write_evaluation(result: dict[str, Any], workdir: paths.PathLike) -> dict[str, Any]:
    """Writes evaluation.json, evaluation.md and the figures (process 0); returns the result.

    Args:
      result: the evaluation dict (`evaluate_run` or `evaluate_ensemble_outputs`); NaNs
        become None.
      workdir: the run directory.
    """
    import jax

    from mlb_jax import trainer
    from mlb_jax.plots import (
        plot_agreement,
        plot_confusion,
        plot_reliability,
        plot_robustness,
        plot_subsets,
    )

    result = _clean(result)
    if jax.process_index() == 0:
        workdir = paths.as_path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        trainer.write_json_atomic(workdir / EVALUATION_FILE, result)
        title = f"{result['method']} seed {result['seed']}, {result['split']}"
        plot_confusion(
            {h: np.array(v["confusion"]) for h, v in result["heads"].items()},
            workdir / FIGURES["confusion"],
            title=title,
        )
        plot_reliability(result["heads"], workdir / FIGURES["calibration"], title=title)
        if "subsets" in result:
            plot_subsets(result["subsets"], workdir / FIGURES["subsets"], title=title)
        if "robustness" in result:
            plot_robustness(result["robustness"], workdir / FIGURES["robustness"], title=title)
        if "agreement" in result:
            names = result["modalities"]
            plot_agreement(result["agreement"], names, workdir / FIGURES["agreement"], title=title)
        paths.write_atomic(workdir / REPORT_FILE, markdown_report(result))
    return result


# ----------------------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def markdown_report(result: dict[str, Any]) -> str:
    """evaluation.md: the evaluation dict as Markdown tables (accuracies in %)."""
    names = result["modalities"]
    lines = [
        f"# Evaluation: {result['method']} seed {result['seed']}",
        "",
        f"Split `{result['split']}` ({result['num_examples']} examples, "
        f"{result['num_classes']} classes), {result['checkpoint']} checkpoint.",
        "",
        "## Heads",
        "",
    ]
    top5 = any("top5_accuracy" in h for h in result["heads"].values())
    head = "| head | accuracy | macro-F1 | Cohen's kappa |" + (" top-5 |" if top5 else "")
    head += " ECE | class-wise ECE |"
    lines += [head, "|---" * (head.count("|") - 1) + "|"]
    for name, h in result["heads"].items():
        row = f"| {name} | {_pct(h['accuracy'])} | {_pct(h['macro_f1'])} | {h['kappa']:.3f} |"
        if top5:
            row += f" {_pct(h.get('top5_accuracy'))} |"
        row += f" {h['ece']:.3f} | {h['classwise_ece']:.3f} |"
        lines.append(row)
    lines += ["", "Per-class F1 (%):", ""]
    heads = list(result["heads"])
    lines += ["| class | support | " + " | ".join(heads) + " |", "|---" * (len(heads) + 2) + "|"]
    support = result["heads"]["fused"]["per_class"]["support"]
    for k in range(result["num_classes"]):
        cells = " | ".join(_pct(result["heads"][h]["per_class"]["f1"][k]) for h in heads)
        lines.append(f"| {k} | {support[k]} | {cells} |")
    if "subsets" in result:
        sub = result["subsets"]
        lines += [
            "",
            f"## Modality subsets (absent modality: {ABSENT_TEXT[sub['absent']]})",
            "",
            "| subset | fused accuracy |",
            "|---|---|",
        ]
        lines += [f"| {s} | {_pct(a)} |" for s, a in sub["accuracy"].items()]
        shap = " ".join(f"{m} {100 * sub['shapley'][m]:+.1f}" for m in names)
        imb = sub["imbalance_index"]
        lines += [
            "",
            f"Shapley values (accuracy points): {shap}; imbalance index "
            f"{'—' if imb is None else f'{imb:.3f}'} (0: equal contributions, 1: one modality).",
        ]
    if "robustness" in result:
        rob = result["robustness"]
        levels = rob["levels"]
        lines += [
            "",
            f"## Robustness (Gaussian noise on one modality; sigma in {rob['unit']})",
            "",
            "| noised modality | " + " | ".join(f"sigma {x:g}" for x in levels) + " |",
            "|---" * (len(levels) + 1) + "|",
        ]
        for m in names:
            lines.append(f"| {m} | " + " | ".join(_pct(a) for a in rob["accuracy"][m]) + " |")
    if "agreement" in result:
        agr = result["agreement"]
        lines += [
            "",
            f"## Agreement with {agr['reference']}",
            "",
            "| pattern | examples | fused accuracy |",
            "|---|---|---|",
        ]
        lines += [
            f"| {p['pattern']} | {p['count']} | {_pct(p['fused_accuracy'])} |"
            for p in agr["patterns"]
        ]
    lines += ["", "Figures: " + ", ".join(f"`{f}`" for f in FIGURES.values()) + "."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line


class EvaluateError(RuntimeError):
    """A run cannot be evaluated; the message names the cause and the fix."""


def evaluate_workdir(
    workdir: paths.PathLike, split: str = "", checkpoint: str = "best"
) -> dict[str, Any]:
    """Restores the run in `workdir` and evaluates it (the CLI's work).

    Args:
      workdir: a run directory written by `mlb_jax.train`.
      split: split name ('' = the run's config.data.test_split).
      checkpoint: 'best' (best on validation) or 'latest'.

    Raises:
      EvaluateError: no such run, no checkpoint, unknown split or checkpoint ('latest' of an
        ensemble run, which holds none of its own).
    """
    from mlb_jax import trainer
    from mlb_jax.checkpointing import RunCheckpoints
    from mlb_jax.finished_runs import CONFIG_FILE, config_from_doc
    from mlb_jax.methods import make_method

    workdir = paths.as_path(workdir)
    if checkpoint not in CHECKPOINTS:
        raise EvaluateError(f"--checkpoint={checkpoint!r}: choose one of {list(CHECKPOINTS)}")
    if not workdir.is_dir():
        raise EvaluateError(f"--workdir={str(workdir)!r} does not exist: give a run directory")
    if not (workdir / CONFIG_FILE).exists():
        raise EvaluateError(
            f"{workdir} holds no run (no {CONFIG_FILE}): train one there with mlb_jax.train"
        )
    config = config_from_doc(json.loads((workdir / CONFIG_FILE).read_text()))
    ensemble = not make_method(config.method).trains
    if ensemble and checkpoint != "best":
        raise EvaluateError(
            f"{workdir} is an {config.method.name!r} run of finished runs: it has only its "
            "members' best checkpoints; use --checkpoint=best"
        )
    meta = trainer.load_dataset(config)
    split = split or config.data.test_split
    if split not in meta.split_sizes:
        raise EvaluateError(
            f"--split={split!r}: {meta.name} has no such split (it has {sorted(meta.split_sizes)})"
        )
    if ensemble:
        from mlb_jax.ensemble import member_predictions, restore_members

        members, _ = restore_members(config, meta)
        method = make_method(config.method)
        return evaluate_ensemble_outputs(
            config,
            member_predictions(members, split),
            workdir,
            split=split,
            norm=method.norm,
            members={m: str(d) for m, d in method.workdirs},
        )
    # Checked on disk first: opening RunCheckpoints would create the directories.
    where = workdir / ("best" if checkpoint == "best" else "checkpoints")
    if not where.is_dir() or not any(p.name.isdigit() for p in where.iterdir()):
        raise EvaluateError(
            f"{workdir} has no {'best ' if checkpoint == 'best' else ''}checkpoint (no epoch "
            "finished): train it first"
        )
    run, fresh = trainer.setup(config, meta)
    ckpts = RunCheckpoints(workdir)
    try:
        if checkpoint == "best":
            state = ckpts.restore_best(fresh)
        else:
            state, _ = ckpts.restore(fresh)
    finally:
        ckpts.close()
    return evaluate_run(run, state, workdir, split=split, checkpoint=checkpoint)


def summary_line(result: dict[str, Any], workdir: epath.Path) -> str:
    """One line: fused accuracy and macro-F1, Shapley values, where the report went."""
    fused = result["heads"]["fused"]
    parts = [
        f"{result['split']}: accuracy {100 * fused['accuracy']:.1f}",
        f"macro-F1 {100 * fused['macro_f1']:.1f}",
        f"ECE {fused['ece']:.3f}",
    ]
    if "subsets" in result:
        shap = result["subsets"]["shapley"]
        parts.append("Shapley " + " ".join(f"{m} {100 * v:+.1f}" for m, v in shap.items()))
    return " | ".join(parts) + f" -> {workdir / REPORT_FILE}"


def main(argv: list[str]) -> None:
    """Evaluates one run directory; bad input is one `error:` line, exit status 2."""
    del argv
    from mlb_jax.runtime import fail, setup_process

    setup_process(distributed=False, compilation_cache=_CACHE.value)
    try:
        result = evaluate_workdir(_WORKDIR.value, _SPLIT.value, _CHECKPOINT.value)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as err:
        fail(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))
    print(summary_line(result, paths.as_path(_WORKDIR.value)), flush=True)


if __name__ == "__main__":
    from absl import app, flags

    from mlb_jax.runtime import DEFAULT_COMPILATION_CACHE, parse_flags, relaunch

    _WORKDIR = flags.DEFINE_string("workdir", None, "run directory written by mlb_jax.train")
    _SPLIT = flags.DEFINE_string("split", "", "split to evaluate ('' = the run's test split)")
    _CHECKPOINT = flags.DEFINE_enum(
        "checkpoint", "best", list(CHECKPOINTS), "best (on validation) or latest checkpoint"
    )
    _CACHE = flags.DEFINE_string(
        "compilation_cache",
        DEFAULT_COMPILATION_CACHE,
        "persistent XLA compilation cache directory ('' disables it)",
    )
    flags.mark_flags_as_required(["workdir"])
    relaunch()  # huge pages for XLA's buffers (mlb_jax.allocator), before anything else
    app.run(main, flags_parser=parse_flags)
