"""Milliseconds per sample of the random masks and the four forgery generators, on one core.

    python -m benchmarks.forgeries [--samples 200] [--size 256]   (from the repository root)

Masks are timed on their own; each generator is timed on pre-drawn masks (so its figure
excludes the mask), and `synthesize` end to end (mask + forgery, then with post-processing).
Enhancement uses the IMC manipulation bank when it imports, else a Gaussian blur stand-in
(said in the output). Inputs are blurred random textures; inpainting cost depends on the mask
area and radius, not on the content.
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from mantra_jax.data import forgeries, masks


def _texture(rng, size):
    noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (5, 5), 1.5)


def _blur(image, rng):
    del rng
    return cv2.GaussianBlur(image, (5, 5), 1.5)


def _time_ms(function, count):
    """Mean and 95th percentile of the per-call time, in milliseconds."""
    times = np.empty(count)
    for index in range(count):
        start = time.perf_counter()
        function(index)
        times[index] = time.perf_counter() - start
    return 1000 * times.mean(), 1000 * np.percentile(times, 95)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    count, size = args.samples, args.size

    rng = np.random.default_rng(0)
    patches = [_texture(rng, size) for _ in range(8)]
    donors = [_texture(rng, size) for _ in range(8)]
    drawn_masks = [masks.random_mask(np.random.default_rng(i), size, size) for i in range(count)]
    try:
        forgeries.imc_manipulation(patches[0], np.random.default_rng(0))
        manipulate, manipulate_name = forgeries.imc_manipulation, "IMC bank"
    except ImportError:
        manipulate, manipulate_name = _blur, "Gaussian blur stand-in (IMC bank not importable)"

    def sample_rng(index):
        return np.random.default_rng(10_000 + index)

    rows = []
    for kind in masks.MASK_KINDS:
        rows.append((f"mask {kind}", _time_ms(
            lambda i, k=kind: masks.random_mask(sample_rng(i), size, size, kind=k), count)))
    generators = {
        "splicing": lambda i: forgeries.splicing(patches[i % 8], donors[i % 8], drawn_masks[i],
                                                 sample_rng(i)),
        "copy_move": lambda i: forgeries.copy_move(patches[i % 8], drawn_masks[i], sample_rng(i)),
        "removal": lambda i: forgeries.removal(patches[i % 8], drawn_masks[i], sample_rng(i)),
        "enhancement": lambda i: forgeries.enhancement(patches[i % 8], drawn_masks[i],
                                                       sample_rng(i), manipulate),
    }
    for name, generator in generators.items():
        rows.append((name, _time_ms(generator, count)))
    rows.append(("postprocess (jpeg 0.5, down 0.3)", _time_ms(
        lambda i: forgeries.postprocess(patches[i % 8], sample_rng(i)), count)))
    for post in (None, {}):
        label = "synthesize random kind" + (" + postprocess" if post is not None else "")
        rows.append((label, _time_ms(
            lambda i, p=post: forgeries.synthesize(None, patches[i % 8], donors[i % 8],
                                                   sample_rng(i), manipulate=manipulate,
                                                   postprocess_kwargs=p), count)))

    print(f"{size}x{size}, {count} samples each, cv2.setNumThreads(1), "
          f"enhancement via {manipulate_name}")
    print(f"  {'':<40s} {'mean':>7s} {'p95':>7s} (ms/sample)")
    for name, (mean, p95) in rows:
        print(f"  {name:<40s} {mean:7.2f} {p95:7.2f}")


if __name__ == "__main__":
    main()
