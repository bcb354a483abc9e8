"""The exported ONNX model under onnxruntime against the JAX Predictor, side by side on the CPU.

    python -m benchmarks.export_speed [--size 1x256x384] [--repeats 5] [--threads 0] [--variant Ptrain4]
                                      [--width_scale 1.0]
    (from the repository root; needs requirements-export.txt)

The released network (random weights: speed does not depend on them) is exported to ONNX and to
StableHLO as `python -m experiments.export` does (mantra_jax/infer/export.py), then one N x H x W
uint8 batch is run by three runners, float32 throughout:
  jax        Predictor.predict (the jitted whole-image program), image by image;
  stablehlo  the deserialized model.stablehlo (the same XLA program, batched);
  onnx       model.onnx under onnxruntime's CPU provider.
The process is pinned to --threads cores (0: all it may use) with os.sched_setaffinity, which
bounds XLA's thread pool and onnxruntime's alike, and onnxruntime gets as many intra-op
threads. After one warm-up call each (compilation for JAX, session optimisation for
onnxruntime), the runners take turns, --repeats rounds, so that a shared machine's load falls
on all of them alike. Prints the export times, then per runner the median and best seconds per
call and the CPU seconds per call (process time: cpu / time shows the cores actually had),
onnx / jax ratios, the largest difference of the probabilities, and a last line
`jax_s=<float> onnx_s=<float> stablehlo_s=<float> onnx_over_jax=<float>`.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks import harness


def _parse_size(text):
    n, h, w = (int(v) for v in text.lower().split("x"))
    return n, h, w


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=_parse_size, default=(1, 256, 384), help="N x H x W (default 1x256x384)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="cores for both runtimes (0: all available)")
    parser.add_argument("--variant", default="Ptrain4", help="released configuration")
    parser.add_argument("--width_scale", type=float, default=1.0, help="< 1: a smaller network (quick runs)")
    args = parser.parse_args(argv)

    available = sorted(os.sched_getaffinity(0))
    threads = args.threads or len(available)
    os.sched_setaffinity(0, available[:threads])  # before JAX starts its thread pool

    import jax
    import numpy as np

    from mantra_jax.infer import export
    from mantra_jax.nn import config, model
    from mantra_jax.infer.predict import Predictor

    cfg = config.released(args.variant)
    if args.width_scale != 1.0:
        small = config.make_config(width_scale=args.width_scale, windows=cfg.windows)
        cfg = cfg.replace(**{k: getattr(small, k) for k in ("widths", "regular_filters", "bayar_filters",
                                                            "feature_dim", "adapt_dim", "lstm_filters")})
    variables = jax.tree.map(np.asarray, model.init(jax.random.key(0), cfg))
    predictor = Predictor(cfg, variables)
    n, h, w = args.size
    images = np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    print(f"ManTra-Net {args.variant} width_scale={args.width_scale}, random weights; batch {n}x{h}x{w}; "
          f"{threads} core(s) ({os.cpu_count()} on the machine), onnxruntime intra-op threads {threads}; "
          f"jax {jax.__version__}, onnxruntime {export.package_version('onnxruntime')}, jax2onnx {export.package_version('jax2onnx')}",
          flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        Path(tmp, "model.stablehlo").write_bytes(export.export_stablehlo(variables, cfg))
        print(f"stablehlo export: {time.perf_counter() - start:.1f} s", flush=True)
        start = time.perf_counter()
        Path(tmp, "model.onnx").write_bytes(export.export_onnx(variables, cfg))
        print(f"onnx export: {time.perf_counter() - start:.1f} s "
              f"({Path(tmp, 'model.onnx').stat().st_size / 1e6:.1f} MB)", flush=True)
        runners = {
            "jax": lambda x: np.stack([predictor.predict(image) for image in x]),
            "stablehlo": export.load_stablehlo(Path(tmp, "model.stablehlo")),
            "onnx": export.load_onnx(Path(tmp, "model.onnx"), threads=threads),
        }
        outputs, times, cpus = {}, {k: [] for k in runners}, {k: [] for k in runners}
        for name, run in runners.items():
            start = time.perf_counter()
            outputs[name] = np.asarray(run(images))
            print(f"{name}: first call (compilation / session set-up) {time.perf_counter() - start:.2f} s", flush=True)
        for _ in range(args.repeats):
            for name, run in runners.items():
                cpu, start = time.process_time(), time.perf_counter()
                run(images)
                times[name].append(time.perf_counter() - start)
                cpus[name].append(time.process_time() - cpu)
    median = {k: harness.median(v) for k, v in times.items()}
    for name in runners:
        print(f"{name:10s} median {median[name]:.3f} s/call  best {min(times[name]):.3f} s  "
              f"cpu {harness.median(cpus[name]):.3f} s/call  "
              f"max |p - p_jax| {float(np.max(np.abs(outputs[name] - outputs['jax']))):.2e}")
    ratio = median["onnx"] / median["jax"]
    print(f"onnx / jax: {ratio:.2f} x the time ({'onnxruntime faster' if ratio < 1 else 'JAX faster'}); "
          f"stablehlo / jax: {median['stablehlo'] / median['jax']:.2f}")
    print(f"jax_s={median['jax']:.4f} onnx_s={median['onnx']:.4f} stablehlo_s={median['stablehlo']:.4f} "
          f"onnx_over_jax={ratio:.3f}")


if __name__ == "__main__":
    main()
