"""Per-layer convolution times on this CPU: XLA's convolution, mlb_jax's plans, and PyTorch.

For every convolution of the two ResNet-18 encoders at a benchmark shape (batch 16; video
frames folded into the batch), times the three passes (forward, input gradient, kernel
gradient) four ways: XLA's ``lax.conv_general_dilated`` and its autodiff, the algorithms
``mlb_jax.models.conv.plan``'s fixed thresholds pick (``config.model.conv='plan'``), the
algorithms measured fastest on this machine (``mlb_jax.models.conv_tune``,
``config.model.conv='tuned'``; its choice per pass is printed,
x = XLA, p = patches, s = shifted rows, w = Winograd), and ``torch.nn.functional.conv2d`` with
autograd, all with the same threads. Prints the machine, one line per layer and the totals.

    python benchmarks/conv_layers.py --shape 112 --reps 3
    python benchmarks/conv_layers.py --shape quick
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

# name -> [(modality, N, H, W, C_in)], batch 16 and 3 frames per clip (N = 48 for video).
SHAPES = {
    "quick": [("audio", 16, 128, 94, 1), ("video", 48, 56, 56, 3)],
    "112": [("audio", 16, 257, 188, 1), ("video", 48, 112, 112, 3)],
    "224": [("audio", 16, 257, 188, 1), ("video", 48, 224, 224, 3)],
}
PASSES = ("fwd", "dx", "dw")
IMPLS = ("xla", "plan", "tuned", "torch")


def resnet18_convs(n: int, h: int, w: int, c: int) -> list[tuple]:
    """(name, N, H, W, C_in, C_out, k, stride, pad, count) of ResNet-18's convolutions."""
    out = [("stem", n, h, w, c, 64, 7, 2, 3, 1)]
    h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # stem
    h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # max-pool
    out.append(("stage1 3x3", n, h, w, 64, 64, 3, 1, 1, 4))
    cin = 64
    for cout in (128, 256, 512):
        out.append((f"{cout} 3x3 s2", n, h, w, cin, cout, 3, 2, 1, 1))
        out.append((f"{cout} 1x1 s2", n, h, w, cin, cout, 1, 2, 0, 1))
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        out.append((f"{cout} 3x3", n, h, w, cout, cout, 3, 1, 1, 3))
        cin = cout
    return out


def median_ms(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of ``fn`` over ``reps`` calls after one warm-up, in ms."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def time_layer(layer: tuple, reps: int, torch) -> dict[str, float]:
    """Times the three passes of one layer for XLA, the plan and PyTorch (ms, x count)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from mlb_jax.models import conv_tune
    from mlb_jax.models.conv import conv_general_dilated

    _, n, h, w, cin, cout, k, s, p, count = layer
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((n, h, w, cin), np.float32)
    k_np = (rng.standard_normal((k, k, cin, cout)) * 0.05).astype(np.float32)
    x, kernel = jnp.asarray(x_np), jnp.asarray(k_np)
    args = ((s, s), ((p, p), (p, p)))
    dims = ("NHWC", "HWIO", "NHWC")
    convs = {
        "xla": lambda x_, k_: lax.conv_general_dilated(x_, k_, *args, dimension_numbers=dims),
        "plan": lambda x_, k_: conv_general_dilated(x_, k_, *args, dimension_numbers=dims),
        "tuned": lambda x_, k_: conv_tune.conv_function()(x_, k_, *args, dimension_numbers=dims),
    }
    dy = jnp.asarray(rng.standard_normal(convs["xla"](x, kernel).shape), jnp.float32)
    out = {}
    for impl, conv in convs.items():
        fwd = jax.jit(conv)
        dx = jax.jit(lambda x_, k_, g, conv=conv: jax.vjp(lambda a: conv(a, k_), x_)[1](g))
        dw = jax.jit(lambda x_, k_, g, conv=conv: jax.vjp(lambda b: conv(x_, b), k_)[1](g))
        out[f"{impl} fwd"] = median_ms(lambda f=fwd: f(x, kernel).block_until_ready(), reps)
        out[f"{impl} dx"] = (
            median_ms(lambda f=dx: jax.block_until_ready(f(x, kernel, dy)), reps)
            if cin > 3
            else 0.0
        )
        out[f"{impl} dw"] = median_ms(lambda f=dw: jax.block_until_ready(f(x, kernel, dy)), reps)
    tx = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    tk = torch.from_numpy(k_np.transpose(3, 2, 0, 1).copy()).requires_grad_(True)
    tdy = torch.from_numpy(np.asarray(dy).transpose(0, 3, 1, 2).copy())
    ty = torch.nn.functional.conv2d(tx, tk, stride=s, padding=p)

    def torch_fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(tx, tk, stride=s, padding=p)

    out["torch fwd"] = median_ms(torch_fwd, reps)
    out["torch dx"] = (
        median_ms(lambda: torch.autograd.grad(ty, tx, tdy, retain_graph=True), reps)
        if cin > 3
        else 0.0
    )
    out["torch dw"] = median_ms(lambda: torch.autograd.grad(ty, tk, tdy, retain_graph=True), reps)
    out = {key: count * value for key, value in out.items()}
    chosen = conv_tune.tuner()(x.shape, kernel.shape, *args)
    out["choice"] = "".join(getattr(chosen, name)[0] for name in conv_tune.PASSES)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="112")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    from mlb_jax.allocator import allocator_mode

    malloc = allocator_mode()  # the heap setting it started with (mlb_jax.allocator)
    try:
        import torch
    except ImportError:
        sys.exit("PyTorch is missing: pip install -e '.[bench]'")
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    from mlb_jax.machine import cpu_description

    print(f"{cpu_description()}, {threads} thread(s); torch {torch.__version__}; malloc {malloc}")
    print("ms per layer group (count x one call), input gradient of the stems not needed (0);")
    print("columns: xla / plan / tuned / torch for fwd, dx, dw; tuned's choice (fwd dx dw)")
    totals: dict[str, float] = {}
    for modality, n, h, w, c in SHAPES[args.shape]:
        for layer in resnet18_convs(n, h, w, c):
            times = time_layer(layer, args.reps, torch)
            choice = times.pop("choice")
            for key, value in times.items():
                totals[key] = totals.get(key, 0.0) + value
            cells = "  ".join(
                f"{p} " + " ".join(f"{times[f'{impl} {p}']:5.0f}" for impl in IMPLS) for p in PASSES
            )
            print(
                f"{modality:5} {layer[0]:11} {layer[2]:>3}x{layer[3]:<3}x{layer[4]:<3} "
                f"x{layer[9]}  {cells}  {choice}",
                flush=True,
            )
    for impl in IMPLS:
        parts = " + ".join(f"{p} {totals[f'{impl} {p}']:.0f}" for p in PASSES)
        total = sum(totals[f"{impl} {p}"] for p in PASSES)
        print(f"total {impl:5}: {parts} = {total:.0f} ms")
    torch_total = sum(totals[f"torch {p}"] for p in PASSES)
    for impl in IMPLS[:-1]:
        ratio = sum(totals[f"{impl} {p}"] for p in PASSES) / torch_total
        print(f"{impl}/torch, all convolution passes: {ratio:.3f}")


if __name__ == "__main__":
    main()
