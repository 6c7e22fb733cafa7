"""What evaluating every modality subset costs against one plain evaluation pass.

    python benchmarks/evaluate_cost.py [--examples=800] [--repeats=5]

At the demo's shapes (configs/synthetic_av.py: base_width 8, audio [64, 48], video
[3, 64, 64, 3], 8 classes, eval batch 200, late-linear fusion; for M = 3 a second audio
modality of the same shape) it times, compile excluded (each function runs once first):

* plain: the jitted eval step (`steps.make_eval_step`) over every batch of the split;
* subsets: the same pass (which yields the features) plus `make_subset_logits` over the
  whole split for all 2^M masks (the absent inputs' encoders run once, on a batch of one).

It prints the median of `--repeats` timings and the ratio subsets / plain, which the
evaluation promises to keep at most 1.5 (M = 2) and 3 (M = 3). Random inputs: the cost does
not depend on the values.
"""

import argparse
import statistics
import time

import jax
import ml_collections
import numpy as np

from mlb_jax import attribution
from mlb_jax.config_base import synthetic_av
from mlb_jax.evaluation_passes import absent_inputs, make_subset_logits
from mlb_jax.steps import create_train_state, make_eval_step


def _config(modalities: dict) -> ml_collections.ConfigDict:
    config = synthetic_av()
    config.model.modalities = modalities
    config.method.name = "joint"
    return config


def measure(modalities: dict, shapes: dict, examples: int, batch: int, repeats: int) -> dict:
    """Median seconds of the plain pass and of the all-subsets evaluation, compile excluded."""
    config = _config(modalities)
    graphdef, method, _, state = create_train_state(config, 8, shapes)
    eval_step = jax.jit(make_eval_step(graphdef, method))
    subset_logits = make_subset_logits(graphdef, method, list(modalities))
    rng = np.random.default_rng(0)
    batches = [
        {"inputs": {m: rng.normal(size=(batch, *s)).astype(np.float32) for m, s in shapes.items()}}
        for _ in range(examples // batch)
    ]
    batches = jax.device_put(batches)
    absent = absent_inputs("zeros", shapes)
    masks = attribution.subset_masks(len(modalities))

    def plain():
        outs = [eval_step(state, b) for b in batches]
        return jax.block_until_ready(outs)

    def subsets():
        outs = plain()
        features = {m: jax.numpy.concatenate([o["features"][m] for o in outs]) for m in shapes}
        return jax.block_until_ready(subset_logits(state, features, absent, masks))

    timings = {}
    for name, fn in (("plain", plain), ("subsets", subsets)):
        fn()  # compile
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        timings[name] = statistics.median(runs)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=800, help="examples (demo test split)")
    parser.add_argument("--batch", type=int, default=200, help="eval batch (demo config)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median)")
    args = parser.parse_args()
    audio = {"kind": "audio", "in_channels": 1}
    video = {"kind": "video", "in_channels": 3}
    cases = {
        2: ({"audio": audio, "video": video}, {"audio": (64, 48), "video": (3, 64, 64, 3)}),
        3: (
            {"audio": audio, "video": video, "audio2": audio},
            {"audio": (64, 48), "video": (3, 64, 64, 3), "audio2": (64, 48)},
        ),
    }
    limits = {2: 1.5, 3: 3.0}
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), jax {jax.__version__}")
    for m, (modalities, shapes) in cases.items():
        t = measure(modalities, shapes, args.examples, args.batch, args.repeats)
        ratio = t["subsets"] / t["plain"]
        print(
            f"M = {m}: plain pass {t['plain']:.3f} s, all {2**m - 1} subsets (+ none) "
            f"{t['subsets']:.3f} s, ratio {ratio:.2f}x (limit {limits[m]}x: "
            f"{'ok' if ratio <= limits[m] else 'EXCEEDED'})"
        )


if __name__ == "__main__":
    main()
