"""Real three-modality data on this CPU: every method on UTD-MHAD, 3 seeds, into the README.

    python -m data_prep.utd_mhad --raw_dir=../shared/data/utd_mhad --out_dir=DATA
    python benchmarks/utd_mhad.py --data_dir=DATA [--workdir=runs/bench_utd_mhad] [--seeds=0,1,2]
        [--methods=...] [--no_readme]

Runs `python -m mlb_jax.compare --config=configs/utd_mhad.py` (depth frames, skeleton joints and
the wearable inertial sensor, M = 3) for joint, multi-loss, MLB, one unimodal run per modality,
and every baseline that supports three modalities, over the seeds (finished runs are reused, so
a killed benchmark continues), times it, and writes the comparison table (fused accuracy, each
modality's unimodal-head and linear-probe accuracy, ECE; test split, best-on-validation epoch,
mean ± std over seeds) with the command, the machine and the wall time into the README between
the markers below. The table is what was measured: no row is edited.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import time

from mlb_jax.machine import cpu_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/utd_mhad.py"
# Everything that trains with M = 3: the proposed method, its ablation baselines, one run per
# modality (and the reference rows built on them), and the balancing baselines.
METHODS = (
    "joint,multiloss,mlb,unimodal,ensemble,pre_frozen,pre_finetuned,"
    "ogm,ogm_ge,mslr,mmpareto,agm,pmr,mmcosine,reconboost"
)
BEGIN, END = "<!-- utd_mhad:begin -->", "<!-- utd_mhad:end -->"


def write_readme(block: str, readme: pathlib.Path) -> None:
    """Replaces the text between the README's markers with `block` (temp file + rename)."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} markers: add them where the table goes")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}")
    tmp.replace(readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="the converted UTD-MHAD (data_prep)")
    parser.add_argument("--workdir", default="runs/bench_utd_mhad")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--no_readme", action="store_true", help="print the table only")
    args = parser.parse_args()
    workdir = (ROOT / args.workdir).resolve()
    command = [
        sys.executable,
        "-m",
        "mlb_jax.compare",
        f"--config={CONFIG}",
        f"--config.data.dir={pathlib.Path(args.data_dir).resolve()}",
        f"--methods={args.methods}",
        f"--seeds={args.seeds}",
        f"--workdir={workdir}",
    ]
    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    print(f"machine: {machine}", flush=True)
    reused = len(list(workdir.rglob("results.json"))) if workdir.exists() else 0
    start = time.time()
    subprocess.run(command, cwd=ROOT, check=True)
    minutes = (time.time() - start) / 60
    table = (workdir / "comparison.md").read_text().strip()
    print(table)
    print(f"wall time: {minutes:.1f} min (target: under 40 min on a 2-core CPU)")
    if args.no_readme:
        return
    shown = " ".join(
        ["python benchmarks/utd_mhad.py --data_dir=DATA", f"--seeds={args.seeds}"]
        + ([] if args.methods == METHODS else [f"--methods={args.methods}"])
    )
    started = (
        "from an empty work directory"
        if not reused
        else f"reusing {reused} runs finished earlier (their time is not counted)"
    )
    block = (
        f"{table}\n\n"
        f"Measured with `{shown}` on {machine}: {minutes:.1f} min {started}, "
        "conversion not included."
    )
    write_readme(block, ROOT / "README.md")
    print(f"table written into {ROOT / 'README.md'}")


if __name__ == "__main__":
    main()
