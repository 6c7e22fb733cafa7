"""Train-step time of each framework alone under each heap setting (mlb_jax.allocator).

Each (framework, heap setting) runs in its own child process, as a user's training process
would: ``system`` is the process as started (glibc maps every large block afresh, so each
step faults in its buffers 4 KiB at a time), ``hugepages`` is the process relaunched with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, as mlb_jax's entry points do, ``reuse`` the process
set up in place to keep large blocks for the next step (`mlb_jax.allocator.reuse_heap`). The
same model and step as `step_speed.py` (MLB, batch 16, two full-width ResNet-18s, 2 threads).
Children run in rounds, the settings' order alternating between rounds, so that slow drift of
the machine falls on both; each child prints every timed step, its minor page faults per step
and its peak resident memory. Printed per shape: median and minimum step time over all rounds,
faults, peak memory, and the ratios that answer "what does the setting buy" and "JAX against
PyTorch, each alone".

    python benchmarks/heap_speed.py                   # shapes 112 and 224, 2 rounds, 8 steps
    python benchmarks/heap_speed.py --shapes quick --rounds 1 --steps 3

`step_speed.py` times both frameworks in one process instead; with huge pages there the two
disturb each other (JAX steps of 2.0-2.4 s every few repetitions against 1.1 s alone), which
is why this comparison runs them apart.
"""

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import step_speed

MODES = ("system", "hugepages", "reuse")
FRAMEWORKS = ("jax", "torch")


def child(framework: str, mode: str, shape: str, steps: int) -> None:
    """One framework alone under one heap setting: prints its step times as JSON."""
    step_speed.configure(malloc=mode)  # relaunches this process under 'hugepages'
    from mlb_jax.allocator import allocator_mode

    spectrogram, frames = step_speed.SHAPES[shape]
    batch = step_speed.make_batch(16, spectrogram, frames)
    if framework == "jax":
        device_batch = step_speed.jax_batch(batch)
        step, _ = step_speed.build_jax_step("mlb", 64, device_batch)

        def run() -> None:
            step.run(device_batch)
    else:
        torch = step_speed.import_torch(len(os.sched_getaffinity(0)), "cpu")
        inputs = step_speed.torch_batch(torch, batch, "cpu")
        _, torch_step = step_speed.build_torch_step(torch, "mlb", 64, "cpu")

        def run() -> None:
            torch_step(*inputs)

    for _ in range(2):  # compile / first-touch
        run()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    result = {"mode": allocator_mode(), "ms": [1000 * t for t in times], "faults": faults}
    print(json.dumps({**result, "peak_mib": step_speed.rss_kib() / 1024}))


def run_child(framework: str, mode: str, shape: str, steps: int, cache: str) -> dict:
    """Runs `child` in a fresh process with ``MLB_JAX_MALLOC=mode``; returns its JSON."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update(MLB_JAX_MALLOC=mode, JAX_COMPILATION_CACHE_DIR=cache)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    cmd = [sys.executable, __file__, f"--child={framework},{mode}", f"--shapes={shape}"]
    proc = subprocess.run(
        [*cmd, f"--steps={steps}"], env=env, capture_output=True, text=True, timeout=1800
    )
    if proc.returncode:
        raise RuntimeError(f"{framework} under {mode} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["mode"] != mode:  # e.g. no transparent huge pages on this machine
        raise RuntimeError(f"asked for heap setting {mode!r}, the child ran {result['mode']!r}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="112,224", help="comma-separated: 112, 224, quick")
    parser.add_argument("--rounds", type=int, default=2, help="children per setting")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per child")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # 'framework,mode'
    args = parser.parse_args(argv)
    if args.child:
        framework, mode = args.child.split(",")
        child(framework, mode, args.shapes, args.steps)
        return
    from mlb_jax.allocator import hugepages_supported
    from mlb_jax.machine import cpu_description

    modes = MODES
    thp_path = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
    thp = thp_path.read_text().strip() if thp_path.exists() else "absent"
    print(f"{cpu_description()}; {os.confstr('CS_GNU_LIBC_VERSION')}; THP {thp}", flush=True)
    if not hugepages_supported():
        modes = tuple(mode for mode in MODES if mode != "hugepages")
        print(
            "huge pages cannot act here (glibc >= 2.35 and transparent huge pages needed): "
            f"measuring {', '.join(modes)}",
            flush=True,
        )
    cache = tempfile.mkdtemp(prefix="heap_speed_cache_")
    for shape in args.shapes.split(","):
        runs: dict[tuple[str, str], list[dict]] = {}
        for r in range(args.rounds):
            for mode in modes if r % 2 == 0 else modes[::-1]:
                for framework in FRAMEWORKS:
                    result = run_child(framework, mode, shape, args.steps, cache)
                    runs.setdefault((framework, mode), []).append(result)
        print(f"shape {shape}: MLB, batch 16, {args.rounds} round(s) x {args.steps} steps")
        median = {}
        for (framework, mode), results in runs.items():
            times = [t for res in results for t in res["ms"]]
            median[framework, mode] = statistics.median(times)
            faults = statistics.mean(res["faults"] for res in results)
            peak = max(res["peak_mib"] for res in results)
            print(
                f"  {framework:5s} {mode:9s} step {median[framework, mode]:7.1f} ms median "
                f"({min(times):.1f} min, {max(times):.1f} max); {faults:8.0f} minor faults "
                f"per step; peak RSS {peak:.0f} MiB"
            )
        for framework in FRAMEWORKS:
            for mode in modes[1:]:
                ratio = median[framework, mode] / median[framework, "system"]
                print(f"  {framework} {mode}/system step time = {ratio:.3f}")
        for mode in modes:
            ratio = median["jax", mode] / median["torch", mode]
            print(f"  jax/pytorch step time, both {mode} = {ratio:.3f}")
        for mode in modes[1:]:
            ratio = median["jax", mode] / median["torch", "system"]
            print(f"  jax {mode} / pytorch system step time = {ratio:.3f}", flush=True)


if __name__ == "__main__":
    main()
