"""Synthetic-dataset figures on this machine: demo wall time, and methods compared over seeds.

    python benchmarks/synthetic_av.py --workdir=runs/bench_synthetic [--seeds=0,1,2]
    python benchmarks/synthetic_av.py --workdir=runs/bench_synthetic --skip_demo --methods=all
    python benchmarks/synthetic_av.py --workdir=runs/bench_demo_seeds --skip_demo \
        --compare_config=configs/synthetic_av.py --methods=joint,mlb

1. Times the README's demo command (`python -m mlb_jax.train --config=configs/synthetic_av.py`)
   end to end in a fresh process and a fresh run directory (dataset cache kept; pass
   --fresh_data to time the dataset generation too).
2. Runs `python -m mlb_jax.compare --config=<--compare_config>` (default
   configs/synthetic_av_hard.py, the README tables' fainter video cue) for the methods
   (default joint, multiloss and mlb; `all` = every registered method, the baselines
   included) over the seeds (finished runs are reused), and prints the table plus, per
   method, its fused test accuracy minus joint's and the slower modality's probe accuracy
   minus joint's (MLB's targets: +3 and +5 points).
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/synthetic_av.py"  # the demo
COMPARE_CONFIG = "configs/synthetic_av_hard.py"  # the README's comparison tables


def time_demo(workdir: pathlib.Path, fresh_data: bool) -> float:
    demo_dir = workdir / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "mlb_jax.train", f"--config={CONFIG}", f"--workdir={demo_dir}"]
    if fresh_data:
        cmd.append(f"--config.data.cache_dir={tempfile.mkdtemp()}")
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/bench_synthetic")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="joint,multiloss,mlb")
    parser.add_argument("--slow_modality", default="video")
    parser.add_argument("--skip_demo", action="store_true")
    parser.add_argument("--compare_config", default=COMPARE_CONFIG)
    parser.add_argument("--fresh_data", action="store_true")
    args = parser.parse_args()
    workdir = (ROOT / args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPU cores")

    demo_seconds = None if args.skip_demo else time_demo(workdir, args.fresh_data)
    compare_dir = workdir / "compare"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mlb_jax.compare",
            f"--config={args.compare_config}",
            f"--methods={args.methods}",
            f"--seeds={args.seeds}",
            f"--workdir={compare_dir}",
        ],
        cwd=ROOT,
        check=True,
    )
    results = json.loads((compare_dir / "comparison.json").read_text())["results"]

    def mean(method, f):
        return float(np.mean([f(r) for r in results[method]]))

    print((compare_dir / "comparison.md").read_text())
    if demo_seconds is not None:
        print(f"demo command wall time: {demo_seconds / 60:.1f} min (target <= 10 min)")
    if "joint" not in results:
        return
    slow = args.slow_modality
    for method in results:
        if method == "joint":
            continue
        fused = 100 * (
            mean(method, lambda r: r["accuracy"]) - mean("joint", lambda r: r["accuracy"])
        )
        probe = 100 * (
            mean(method, lambda r: r["probe_accuracy"][slow])
            - mean("joint", lambda r: r["probe_accuracy"][slow])
        )
        targets = " (targets >= +3 and >= +5)" if method == "mlb" else ""
        print(f"{method} - joint: fused {fused:+.1f} points, {slow} probe {probe:+.1f}{targets}")


if __name__ == "__main__":
    main()
