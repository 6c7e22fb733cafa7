"""Evaluates the ensemble of finished unimodal runs (method 'ensemble'): no training.

Each member is the best-on-validation checkpoint of a `unimodal` run; the ensemble's logits
are the sum of the members' logits, each standardised (the reference's `Base_Ensemble_Model`
with `norm_decision: "standardization"`, trained for 0 epochs). The run directory gets the
same config.json and results.json as a trained run, so the compare runner tabulates it.
"""

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from mlb_jax import finished_runs, paths, trainer
from mlb_jax.checkpointing import RunCheckpoints
from mlb_jax.data import schema
from mlb_jax.methods import make_method
from mlb_jax.metrics import accuracy, expected_calibration_error
from mlb_jax.probe import linear_probe_accuracy


def combine_logits(logits: dict[str, np.ndarray], norm: str) -> np.ndarray:
    """The ensemble's logits: the sum over members of n(logits), n per `norm`.

    Args:
      logits: modality -> [N, K] logits of that member over a whole split.
      norm: 'standardization': n(t) = (t - mean(t)) / std(t), one scalar mean and (unbiased)
        std over the member's whole [N, K] array; 'none': n(t) = t.

    Returns:
      [N, K] float64 logits.
    """
    total = 0.0
    for value in logits.values():
        t = np.asarray(value, np.float64)
        if norm == "standardization":
            t = (t - t.mean()) / max(float(t.std(ddof=1)), 1e-12)
        total = total + t
    return total


def member_config(
    member: ml_collections.ConfigDict, config: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """The member's own model and method, evaluated on this run's data and devices."""
    out = ml_collections.ConfigDict(member.to_dict())
    out.data = ml_collections.ConfigDict(config.data.to_dict())
    out.train.num_devices = config.train.get("num_devices", 0)
    out.train.eval_batch_size = config.train.eval_batch_size
    out.progress = False
    return out


def restore_unimodal_runs(
    workdirs: Mapping[str, str],
    config: ml_collections.ConfigDict,
    meta: schema.DatasetMeta,
    field: str,
) -> tuple[dict[str, tuple[Any, Any]], dict[str, Any]]:
    """Finished unimodal runs and their best checkpoints, checked against this dataset.

    Args:
      workdirs: modality -> finished `unimodal` run directory.
      config: the run that uses them (its data and devices are used for theirs).
      meta: this run's dataset.
      field: the config field naming the runs, used in errors (e.g.
        'config.method.ensemble.workdirs').

    Returns:
      (modality -> (trainer.Run, train state), modality -> the run's recorded config).

    Raises:
      FileNotFoundError, ValueError: a run that is missing, not a unimodal run of its
        modality, or trained on another dataset (one line naming `field.<modality>`).
    """
    members, records = {}, {}
    for modality, member_dir in workdirs.items():
        where = f"{field}.{modality}"
        member, resolved = finished_runs.run_config(member_dir, where)
        finished_runs.check_unimodal_run(member, resolved, modality, meta.num_classes, where)
        run, state = trainer.setup(member_config(member, config), meta)
        ckpts = RunCheckpoints(member_dir)
        try:
            members[modality] = (run, ckpts.restore_best(state))
        finally:
            ckpts.close()
        records[modality] = resolved
    return members, records


def restore_members(
    config: ml_collections.ConfigDict, meta: schema.DatasetMeta
) -> tuple[dict[str, tuple[Any, Any]], dict[str, Any]]:
    """This ensemble's members (`restore_unimodal_runs` of its `method.ensemble.workdirs`)."""
    workdirs = dict(make_method(config.method).workdirs)
    return restore_unimodal_runs(workdirs, config, meta, "config.method.ensemble.workdirs")


def member_predictions(
    members: dict[str, tuple[Any, Any]], split: str
) -> dict[str, dict[str, Any]]:
    """Modality -> `trainer.predict` outputs of that member on `split`."""
    return {m: trainer.predict(run, state, split) for m, (run, state) in members.items()}


def evaluate_ensemble(
    config: ml_collections.ConfigDict,
    meta: schema.DatasetMeta,
    workdir: paths.PathLike,
    started: float,
) -> dict[str, Any]:
    """Evaluates the ensemble of `config.method.ensemble.workdirs`; writes and returns results.

    Args:
      config: the experiment config (method 'ensemble').
      meta: the dataset (every member must have been trained on it).
      workdir: this run's directory (config.json, results.json).
      started: time.time() when the invocation began.

    Returns:
      results.json's dict: the keys of a trained run's (`trainer.finish`), with 'steps' and
      'epochs' 0 and 'best_epoch' None, plus 'members' (modality -> run directory).

    Raises:
      FileNotFoundError, ValueError: a member that is missing, not a unimodal run of its
        modality, or trained on another dataset (one line naming the config field).
    """
    method = make_method(config.method)
    members, records = restore_members(config, meta)
    workdir = paths.as_path(workdir)
    trainer.check_run_config(
        workdir, config, {"method": dataclasses.asdict(method), "members": records}
    )

    val = member_predictions(members, config.data.val_split)
    test = member_predictions(members, config.data.test_split)
    train = member_predictions(members, config.data.train_split)
    labels = next(iter(test.values()))["labels"]
    fused = combine_logits({m: out["logits"] for m, out in test.items()}, method.norm)
    fused_val = combine_logits({m: out["logits"] for m, out in val.items()}, method.norm)
    results = {
        "accuracy": accuracy(fused, labels),
        "unimodal_accuracy": {m: accuracy(out["logits"], labels) for m, out in test.items()},
        "probe_accuracy": {
            m: linear_probe_accuracy(
                train[m]["features"][m],
                train[m]["labels"],
                test[m]["features"][m],
                labels,
                meta.num_classes,
                steps=config.probe.steps,
                lr=config.probe.lr,
            )
            for m in members
        },
        "ece": expected_calibration_error(fused, labels),
        "val_accuracy": accuracy(fused_val, next(iter(val.values()))["labels"]),
        "best_epoch": None,  # nothing trained: the members' best checkpoints are combined
        "method": config.method.name,
        "seed": config.seed,
        "steps": 0,
        "epochs": 0,
        "dataset": meta.name,
        "num_test_examples": len(labels),
        "train_seconds": 0.0,
        "wall_seconds": time.time() - started,
        "first_step_seconds": None,
        "early_stopped": None,
        **trainer.recorded_choices(config),
        "members": {m: str(d) for m, d in method.workdirs},
    }
    if jax.process_index() == 0:
        trainer.write_json_atomic(workdir / trainer.RESULTS_FILE, results)
        uni = " ".join(f"{m} {100 * a:.1f}" for m, a in results["unimodal_accuracy"].items())
        print(
            f"ensemble of {len(members)} unimodal runs ({method.norm}): test accuracy "
            f"{100 * results['accuracy']:.1f} | members {uni} | ECE {results['ece']:.3f} "
            f"-> {workdir / trainer.RESULTS_FILE}",
            flush=True,
        )
    from mlb_jax import evaluate  # evaluate imports this module

    if evaluate.EvalSettings.from_config(config).enabled:
        # After results.json: a failing evaluation never loses the run's results.
        evaluation = evaluate.evaluate_ensemble_outputs(
            config,
            test,
            workdir,
            split=config.data.test_split,
            norm=method.norm,
            members=results["members"],
        )
        if jax.process_index() == 0:
            print(evaluate.summary_line(evaluation, workdir), flush=True)
    return results
