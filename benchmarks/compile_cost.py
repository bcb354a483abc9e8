"""What many image sizes cost: compilation against arithmetic, cold and warm, and peak memory.

    python -m benchmarks.compile_cost --checkpoint checkpoints/mantranet_small \
        --trace_checkpoint checkpoints/imc_small [--rounds 1] [--parts sizes,warm,released,memory]

Every figure comes from a fresh Python process (nothing compiled yet, JAX's persistent cache off
unless said), run one after the other, so that the machine's load weighs on all of them alike:

- sizes: `Predictor.predict` on 12 crops of one photo, all of one shape (346 x 347) or of 12
  distinct shapes of about the same area (120,000 pixels, aspect 0.6 to 1.7), through the
  fixed-shape tiled pass (the default) and through the whole-image pass compiled per size
  (`max_untiled_pixels` above the image size); wall seconds for the 12, compilation included.
- warm: the 12 distinct shapes again, twice, with a persistent compilation cache in a new folder:
  the first run fills it (cold), the second reads it (warm).
- released: the released width (random weights), one 1024 x 768 photo: seconds per megapixel of
  the tiled pass and of the whole-image pass, compiled first and not timed (best of `--rounds`),
  against the arithmetic's floor: the whole-image program's FLOPs (XLA's cost analysis) at the
  rate this CPU runs a 3x3 128 -> 128 convolution at 256 x 256.
- memory: peak resident memory (ru_maxrss) of a process that computes the mask and the trace map
  of one 1024 x 1000 photo (`trace.MaskAndTrace`), tiled and whole-image.

Prints one line per measurement and `key=value` summaries.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

DISTINCT_SHAPES = [(int(round((120_000 * a) ** 0.5)), int(round((120_000 / a) ** 0.5)))
                   for a in (0.6, 0.66, 0.72, 0.8, 0.87, 0.94, 1.06, 1.15, 1.25, 1.38, 1.52, 1.68)]
SAME_SHAPE = (346, 347)


def _photo(min_side: int):
    """The largest bundled photo (uint8 RGB), tiled by mirroring up to `min_side` on each axis."""
    import numpy as np

    from mantra_jax.data import bundled, images

    photos = [images.read_rgb(p) for p, _ in bundled.bundled_photo_files()]
    rgb = max(photos, key=lambda a: min(a.shape[:2]))
    reps = (-(-min_side // rgb.shape[0]), -(-min_side // rgb.shape[1]))
    return np.pad(rgb, ((0, (reps[0] - 1) * rgb.shape[0]), (0, (reps[1] - 1) * rgb.shape[1]), (0, 0)),
                  mode="symmetric")


def _crops(shapes):
    rgb = _photo(max(max(s) for s in shapes) + 12 * 7)
    return [rgb[7 * i:7 * i + h, 5 * i:5 * i + w] for i, (h, w) in enumerate(shapes)]


def child_sizes(args) -> dict:
    from mantra_jax.infer import predict

    predictor = predict.Predictor.from_checkpoint(args.checkpoint,
                                                  max_untiled_pixels=10**9 if args.path == "whole" else 0)
    crops = _crops(DISTINCT_SHAPES if args.set == "distinct" else [SAME_SHAPE] * 12)
    start = time.perf_counter()
    for rgb in crops:
        predictor.predict(rgb)
    return {"seconds": time.perf_counter() - start, "pixels": sum(c.shape[0] * c.shape[1] for c in crops)}


def child_released(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mantra_jax.infer import predict
    from mantra_jax.nn import config, model, tiled

    cfg = config.released()
    variables = jax.device_put(model.init(jax.random.key(0), cfg))
    rgb = _photo(1024)[:768, :1024]
    spec = jax.ShapeDtypeStruct(rgb.shape, jnp.uint8)
    flops = tiled.whole_image_map.lower(variables, spec, cfg, jnp.dtype("float32")).compile().cost_analysis()
    flops = (flops[0] if isinstance(flops, list) else flops)["flops"]
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 256, 256, 128)), jnp.float32)
    k = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 128, 128)), jnp.float32)
    conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    conv(x, k).block_until_ready()
    conv_s = min(_timed(lambda: conv(x, k).block_until_ready()) for _ in range(5))
    rate = 2 * 256 * 256 * 9 * 128 * 128 / conv_s
    out = {"flops": flops, "conv_gflops_per_s": rate / 1e9, "floor_s_per_mp": flops / rate / (rgb.size / 3 / 1e6)}
    for path, limit in (("tiled", 0), ("whole", 10**9)):
        p = predict.Predictor(cfg, variables, max_untiled_pixels=limit)
        first = _timed(lambda: p.predict(rgb))
        best = min(_timed(lambda: p.predict(rgb)) for _ in range(args.rounds))
        out[f"{path}_first_s"] = first
        out[f"{path}_s_per_mp"] = best / (rgb.size / 3 / 1e6)
    return out


def child_memory(args) -> dict:
    import resource

    from mantra_jax.infer import predict, trace

    rgb = _photo(1024)[:1000, :1024]
    limit = 10**9 if args.path == "whole" else 0
    predictor = predict.Predictor.from_checkpoint(args.checkpoint, max_untiled_pixels=limit)
    tracer = trace.Tracer.from_checkpoint(args.trace_checkpoint, max_untiled_pixels=limit)
    both = trace.MaskAndTrace(predictor, tracer)
    seconds = _timed(lambda: both(rgb))
    return {"seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "featex_shared": both.shared}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _run(extra, cache: str = "") -> dict:
    env = dict(os.environ, MANTRA_JAX_COMPILATION_CACHE=cache)
    command = [sys.executable, "-m", "benchmarks.compile_cost"] + sys.argv[1:] + extra
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(extra)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--trace_checkpoint", default=None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--parts", default="sizes,warm,released,memory")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default="tiled", help=argparse.SUPPRESS)
    parser.add_argument("--set", default="same", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        cache = os.environ.get("MANTRA_JAX_COMPILATION_CACHE", "")
        if cache:
            import jax

            jax.config.update("jax_compilation_cache_dir", cache)
        print(json.dumps({"sizes": child_sizes, "released": child_released, "memory": child_memory}[args.child](args)))
        return

    parts = args.parts.split(",")
    print(f"cpus={os.cpu_count()} load_average_1min={os.getloadavg()[0]:.1f}")
    if "sizes" in parts:
        times = {}
        for image_set in ("same", "distinct"):
            for path in ("tiled", "whole"):
                r = _run(["--child", "sizes", "--path", path, "--set", image_set])
                times[path, image_set] = r["seconds"]
                print(f"sizes {path} {image_set}: {r['seconds']:.1f} s for 12 images ({r['pixels'] / 1e6:.2f} MP), "
                      f"cold, load {os.getloadavg()[0]:.1f}", flush=True)
        print(f"tiled_distinct_over_same={times['tiled', 'distinct'] / times['tiled', 'same']:.2f} "
              f"whole_distinct_over_same={times['whole', 'distinct'] / times['whole', 'same']:.2f} "
              f"whole_distinct_over_tiled_distinct={times['whole', 'distinct'] / times['tiled', 'distinct']:.2f} "
              f"tiled_same_over_whole_same={times['tiled', 'same'] / times['whole', 'same']:.2f}")
    if "warm" in parts:
        with tempfile.TemporaryDirectory() as cache:
            cold = _run(["--child", "sizes", "--set", "distinct"], cache)["seconds"]
            warm = _run(["--child", "sizes", "--set", "distinct"], cache)["seconds"]
        print(f"warm: 12 distinct shapes, tiled: {cold:.1f} s with an empty cache, {warm:.1f} s with it filled; "
              f"load {os.getloadavg()[0]:.1f}")
        print(f"cold_s={cold:.1f} warm_s={warm:.1f} warm_over_cold={warm / cold:.2f}")
    if "released" in parts:
        r = _run(["--child", "released"])
        print(f"released width, 1024 x 768: tiled {r['tiled_s_per_mp']:.2f} s/MP (first call "
              f"{r['tiled_first_s']:.1f} s), whole-image {r['whole_s_per_mp']:.2f} s/MP (first call "
              f"{r['whole_first_s']:.1f} s); {r['flops'] / 1e9:.0f} GFLOP at {r['conv_gflops_per_s']:.1f} GFLOP/s: "
              f"floor {r['floor_s_per_mp']:.2f} s/MP")
        print(f"tiled_s_per_mp={r['tiled_s_per_mp']:.2f} whole_s_per_mp={r['whole_s_per_mp']:.2f} "
              f"floor_s_per_mp={r['floor_s_per_mp']:.2f}")
    if "memory" in parts and args.trace_checkpoint:
        for path in ("tiled", "whole"):
            r = _run(["--child", "memory", "--path", path])
            print(f"memory {path}: mask + trace of 1024 x 1000 in {r['seconds']:.1f} s (compilation included), "
                  f"peak {r['peak_rss_gb']:.2f} GB, Featex shared: {r['featex_shared']}")


if __name__ == "__main__":
    main()
