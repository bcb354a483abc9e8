"""What manipulation tracing adds to predict: seconds per megapixel, mask alone against mask + trace.

    python -m benchmarks.trace_cost --checkpoint checkpoints/mantranet_small \
        --trace_checkpoint checkpoints/imc_small [--trace_level 1] [--photos DIR] [--rounds 3]

On every photo (default: the bundled photos' source files, mantra_jax/data/bundled.py, at their
own sizes) it times `Predictor.predict` (the mask alone) and `MaskAndTrace` (the mask and the
trace map, Featex once when the two checkpoints share it), each program compiled first and not
timed. The two are timed alternately, photo by photo, for `--rounds` rounds, so that other jobs
on the machine slow both alike; a photo's time is its best round. Prints one line per photo, then
`mask_s_per_mp=<float> mask_trace_s_per_mp=<float> ratio=<float> featex_shared=<bool>` (the sums
of the photos' times over the sum of their megapixels). `--shared_featex` gives the IMC head the
mask checkpoint's Featex (a made-up half-freeze pair, same configuration needed) to time the path
where Featex runs once.
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="ManTra-Net checkpoint")
    parser.add_argument("--trace_checkpoint", required=True, help="IMC checkpoint")
    parser.add_argument("--trace_level", type=int, default=None, help="default: trace.DEFAULT_LEVEL")
    parser.add_argument("--photos", default=None, help="folder of photos (default: the bundled photos)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shared_featex", action="store_true", help="the IMC head on the mask model's Featex")
    args = parser.parse_args()

    from mantra_jax.infer import predict
    from mantra_jax.data import bundled, images
    from mantra_jax.infer import trace

    paths = (images.list_images(args.photos) if args.photos else [p for p, _ in bundled.bundled_photo_files()])
    predictor = predict.Predictor.from_checkpoint(args.checkpoint)
    level = trace.DEFAULT_LEVEL if args.trace_level is None else args.trace_level
    tracer = trace.Tracer.from_checkpoint(args.trace_checkpoint, level=level)
    if args.shared_featex:
        variables = {**tracer.variables, "params": {**tracer.variables["params"],
                                                    "Featex": predictor.variables["params"]["Featex"]}}
        tracer = trace.Tracer(tracer.cfg, variables, level=level)
    both = trace.MaskAndTrace(predictor, tracer)
    runs = {"mask": predictor.predict, "mask_trace": both}
    photos = [(p.name, images.read_rgb(p)) for p in paths]
    best = {name: {k: float("inf") for k in runs} for name, _ in photos}
    for _, rgb in photos:  # compile every program of every size first
        for run in runs.values():
            run(rgb)
    for _ in range(args.rounds):
        for name, rgb in photos:
            for kind, run in runs.items():
                start = time.perf_counter()
                run(rgb)
                best[name][kind] = min(best[name][kind], time.perf_counter() - start)
    total_mp = 0.0
    for name, rgb in photos:
        mp = rgb.shape[0] * rgb.shape[1] / 1e6
        total_mp += mp
        print(f"{name:28s} {rgb.shape[1]:5d}x{rgb.shape[0]:<5d} {mp:6.3f} MP  mask {best[name]['mask']:7.3f} s  "
              f"mask+trace {best[name]['mask_trace']:7.3f} s")
    per_mp = {k: sum(b[k] for b in best.values()) / total_mp for k in runs}
    print(f"mask_s_per_mp={per_mp['mask']:.4f} mask_trace_s_per_mp={per_mp['mask_trace']:.4f} "
          f"ratio={per_mp['mask_trace'] / per_mp['mask']:.4f} featex_shared={both.shared}")


if __name__ == "__main__":
    main()
