"""Peak host memory (RSS) of ManTra-Net inference on CPU: the tiled pass against the whole-image pass.

    python -m benchmarks.tiled_memory            # released model, 12 MP tiled, untiled where it fits
    python -m benchmarks.tiled_memory --quick    # a 1/8-width model on small images (about a minute)

Each measurement runs in its own subprocess (a fresh process, so one run's peak cannot hide
another's) and reports the process's peak RSS (getrusage ru_maxrss), its RSS just before the
prediction (Python, JAX, the model and the image), and the wall time of one prediction including
compilation. The weights are random (memory does not depend on their values); the image is random
noise.

The whole-image pass at the full size does not fit most machines (the released model needs ~40 GB
at 12 MP): before running it, the benchmark asks XLA for the compiled program's buffer sizes
(`memory_analysis`, compilation only, nothing executed) and, when they exceed the memory available
now, prints that estimate and measures the whole-image pass at a smaller size instead, with the
tiled pass at that size too, so the two are side by side.
"""
from __future__ import annotations

import argparse
import os
import time

from benchmarks import harness


def _parse_size(text: str) -> tuple[int, int]:
    """'4000x3000' (width x height, as photos are quoted) -> (height, width)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return height, width


def _model(quick: bool):
    import jax

    from mantra_jax.nn import config, model

    cfg = config.make_config(width_scale=0.125) if quick else config.released()
    return cfg, jax.device_put(model.init(jax.random.key(0), cfg))


# --------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------
def _child_run(mode: str, height: int, width: int, quick: bool, tile: int) -> dict:
    import numpy as np

    from mantra_jax.nn import tiled

    cfg, variables = _model(quick)
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    before = harness.peak_rss_bytes()
    start = time.perf_counter()
    if mode == "untiled":
        prob = tiled.whole_image_probabilities(variables, rgb, cfg)
    else:
        budget = 0 if mode == "tiled-recompute" else tiled.DEFAULT_FEATURE_BUDGET_BYTES
        prob = tiled.tiled_probabilities(variables, rgb, cfg, tile=tile, feature_budget_bytes=budget)
    seconds = time.perf_counter() - start
    return {"peak_bytes": harness.peak_rss_bytes(), "before_bytes": before, "seconds": seconds, "mean": float(prob.mean())}


def _child_estimate(height: int, width: int, quick: bool) -> dict:
    import jax
    import jax.numpy as jnp

    from mantra_jax.nn import config, model, tiled

    cfg = config.make_config(width_scale=0.125) if quick else config.released()
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), cfg))
    image = jax.ShapeDtypeStruct((height, width, 3), jnp.uint8)
    compiled = tiled.whole_image_map.lower(shapes, image, cfg, jnp.dtype(jnp.float32)).compile()
    return {"xla_bytes": tiled.program_bytes(compiled)}


def _in_subprocess(args: list[str]) -> dict:
    return harness.run_child("benchmarks.tiled_memory", ["--child", *args])


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------
def _gb(n: int) -> str:
    return f"{n / 1e9:6.2f} GB"


def _report(mode: str, size: tuple[int, int], result: dict):
    height, width = size
    label = f"{mode:16s} {width:5d}x{height:<5d} {height * width / 1e6:5.1f} MP"
    if "error" in result:
        print(f"{label}  failed ({result['error']}): {result['detail']}", flush=True)
        return
    print(f"{label}  peak RSS {_gb(result['peak_bytes'])}  (before predicting {_gb(result['before_bytes'])})"
          f"  {result['seconds']:8.1f} s", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1/8-width model on small images")
    parser.add_argument("--size", type=_parse_size, default=None, help="WIDTHxHEIGHT (default 4000x3000)")
    parser.add_argument("--small_size", type=_parse_size, default=None,
                        help="WIDTHxHEIGHT for the whole-image pass when the full size does not fit "
                        "(default 1448x1448, 2 MP)")
    parser.add_argument("--tile", type=int, default=None, help="tile interior in pixels (default 512)")
    parser.add_argument("--recompute", action="store_true",
                        help="also measure the tiled pass that recomputes Featex instead of keeping features")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        kind, *rest = args.child
        if kind == "estimate":
            height, width, quick = int(rest[0]), int(rest[1]), rest[2] == "1"
            harness.emit(_child_estimate(height, width, quick))
        else:
            height, width, quick, tile = int(rest[0]), int(rest[1]), rest[2] == "1", int(rest[3])
            harness.emit(_child_run(kind, height, width, quick, tile))
        return

    from mantra_jax.nn import tiled

    quick = "1" if args.quick else "0"
    size = args.size or ((600, 800) if args.quick else (3000, 4000))
    small = args.small_size or ((300, 400) if args.quick else (1448, 1448))
    tile = args.tile or (128 if args.quick else tiled.DEFAULT_TILE)
    print(f"{'quick: 1/8-width model' if args.quick else 'released model (Ptrain4)'}, tile {tile}, "
          f"{os.cpu_count()} CPUs, {_gb(tiled.available_memory_bytes()).strip()} available now", flush=True)

    # The whole-image pass runs at the largest of (size, small) whose XLA buffers fit in the memory
    # available now, with a margin: on CPU the peak RSS measured ~1.6x the XLA figure plus ~1 GB of
    # Python, JAX and the model.
    untiled_size = None
    for hw in (size, small):
        estimate = _in_subprocess(["estimate", str(hw[0]), str(hw[1]), quick])
        if "error" in estimate:
            raise SystemExit(f"could not compile the whole-image pass: {estimate['error']}: {estimate['detail']}")
        need = estimate["xla_bytes"]
        fits = need * 1.6 + 1e9 < tiled.available_memory_bytes()
        print(f"XLA buffers of the whole-image pass at {hw[1]}x{hw[0]}: {_gb(need).strip()}"
              f"{'' if fits else ' -- more than this machine has available now'}", flush=True)
        if fits:
            untiled_size = hw
            break
    sizes = [size] if untiled_size in (None, size) else [untiled_size, size]

    def run(mode, hw):
        _report(mode, hw, _in_subprocess([mode, str(hw[0]), str(hw[1]), quick, str(tile)]))

    if untiled_size is None:
        print("the whole-image pass is not measured: it fits at neither size", flush=True)
    else:
        run("untiled", untiled_size)
    for hw in sizes:
        run("tiled", hw)
        if args.recompute:
            run("tiled-recompute", hw)


if __name__ == "__main__":
    main()
