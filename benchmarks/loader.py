"""Prints a training loader's throughput (samples/s) with 0, 1 and 2 grain workers, and per worker.

Usage: python benchmarks/loader.py [--photos DIR | --synthetic N [--synthetic_size 2304x3072]]
                                   [--stream imc|forgery] [--workers 0,1,2] [--batch_size 32]
                                   [--crop N] [--seconds 10] [--step | --consumed R] [--json PATH]
                                   [--patches_per_image 1] [--cache_images 16]

``--stream imc`` (default) is the IMC training stream (``imc_pipeline.make_train_dataset``,
crops of ``--crop`` pixels, default 128); ``--stream forgery`` the end-to-end stream
(``forgery_pipeline.make_train_dataset`` with the recipe of experiments/flags/mantranet.flags:
all four forgery types, 5 % pristine samples, the random JPEG / down-scaling post-processing;
samples of ``--crop`` pixels, default 256).
The photos are the bundled set by default (small 256x256 tiles: decoding is cheap, the
manipulation dominates); ``--synthetic N`` writes N camera-sized JPEGs to a temporary folder
instead, where decoding a whole photo for each patch dominates (the LRU rarely hits on a
shuffled corpus; ``--patches_per_image 8`` amortises one decode over 8 samples, IMC stream only). Each worker
count gets a fresh pipeline; the first batches (process start) are not timed. With 0
workers the main process does everything on one OpenCV thread: that is the per-core rate.
``--step`` also times the trainer's own IMC step (``loop.make_train_step`` of the IMC task on
the loader's batch shape, on the default JAX device) and prints the loader's rate against the
step's consumption; ``--consumed R`` compares with R samples/s measured elsewhere instead (e.g.
a train step of benchmarks/accelerator.py). Target: the loader is never the bottleneck.
``--json PATH`` writes the figures (stream, shape, photos, rate per worker count, consumption,
ratio).

The last line reads ``samples_per_s_per_worker=<float>``: the rate with the largest worker
count divided by that count (with only 0 workers: the in-process rate).
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import pathlib
import sys
import tempfile
import time

import cv2
import numpy as np

try:
    import mantra_jax  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from mantra_jax.data import bundled, forgery_pipeline, imc_pipeline, photos


def write_synthetic_photos(folder: pathlib.Path, count: int, height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        # Smooth blobs plus grain: photo-like JPEG sizes, std well above 32.
        coarse = rng.integers(0, 256, size=(height // 64 + 1, width // 64 + 1, 3), dtype=np.uint8)
        photo = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        photo = cv2.add(photo, rng.integers(0, 24, size=photo.shape, dtype=np.uint8))
        ok, encoded = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok
        (folder / f"IMG_{i:04d}.jpg").write_bytes(encoded.tobytes())


def make_stream(
    stream: str,
    index,
    workers: int,
    batch_size: int,
    crop: int,
    level: int,
    patches_per_image: int,
    cache_images: int,
):
    if stream == "forgery":
        return forgery_pipeline.make_train_dataset(
            index,
            seed=0,
            batch_size=batch_size,
            pristine_share=0.05,
            postprocess={},
            patch_size=crop,
            worker_count=workers,
            prefetch_buffer=4,
            cache_images=cache_images,
        )
    return imc_pipeline.make_train_dataset(
        index,
        seed=0,
        batch_size=batch_size,
        level=level,
        crop=crop,
        worker_count=workers,
        prefetch_buffer=4,
        patches_per_image=patches_per_image,
        cache_images=cache_images,
    )


def loader_rate(dataset, workers: int, batch_size: int, seconds: float) -> float:
    iterator = iter(dataset)
    for _ in range(max(2, workers)):  # process start-up and first decodes, not timed
        next(iterator)
    batches = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(iterator)
        batches += 1
    elapsed = time.perf_counter() - start
    if hasattr(iterator, "close"):
        iterator.close()
    return batches * batch_size / elapsed


def step_rate(batch_size: int, crop: int, level: int, seconds: float) -> float:
    """Samples/s of the trainer's own IMC step (`loop.make_train_step` of the IMC task at `level`,
    the released width, float32) on the loader's batch shape."""
    import jax  # only here: the loader itself never touches JAX
    import jax.numpy as jnp

    from mantra_jax.imc import taxonomy
    from mantra_jax.nn import model
    from mantra_jax.nn.config import ModelConfig
    from mantra_jax.train import imc, loop

    cfg = ModelConfig(head="imc", num_classes=taxonomy.num_classes(level))
    task = imc.make_task(cfg, level=level, patch_index=None, learning_rate=1e-4)
    clip = loop.LoopConfig.grad_clip_norm
    step = jax.jit(loop.make_train_step(task, clip, jnp.float32), donate_argnums=0)
    state = loop.initial_state(task, model.init(jax.random.key(0), cfg), clip)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, size=(batch_size, crop, crop, 3), dtype=np.uint8)),
             "label": jnp.asarray(rng.integers(0, cfg.num_classes, size=batch_size, dtype=np.int32))}
    lr_scale = np.float32(1.0)
    state, metrics = step(state, batch, lr_scale)  # compile
    jax.block_until_ready(metrics)
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        state, metrics = step(state, batch, lr_scale)
        jax.block_until_ready(metrics)
        steps += 1
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=pathlib.Path, default=None, help="photo folder (default: bundled)")
    parser.add_argument("--synthetic", type=int, default=0, help="write N synthetic camera JPEGs instead")
    parser.add_argument("--synthetic_size", default="2304x3072", help="HxW of the synthetic photos")
    parser.add_argument("--stream", choices=("imc", "forgery"), default="imc", help="which training stream")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated grain worker counts")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--crop", type=int, default=None, help="sample side (default: imc 128, forgery 256)")
    parser.add_argument("--level", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per setting")
    parser.add_argument("--step", action="store_true", help="also time the IMC training step")
    parser.add_argument("--consumed", type=float, default=None,
                        help="samples/s a training step consumes, measured elsewhere, to compare with")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write the figures to this JSON file")
    parser.add_argument("--patches_per_image", type=int, default=1, help="patches drawn per photo decode")
    parser.add_argument(
        "--cache_images", type=int, default=16,
        help="decoded photos kept per process (below the photo count, as in a large corpus)",
    )
    args = parser.parse_args()
    crop = args.crop or (256 if args.stream == "forgery" else 128)
    if args.step and (args.consumed is not None or args.stream != "imc"):
        parser.error("--step times the IMC step: use it with --stream imc and without --consumed")
    if args.patches_per_image != 1 and args.stream != "imc":
        parser.error("--patches_per_image is for the IMC stream")
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            height, width = (int(v) for v in args.synthetic_size.lower().split("x"))
            folder = pathlib.Path(tmp) / "synthetic"
            folder.mkdir()
            write_synthetic_photos(folder, args.synthetic, height, width)
            description = f"{args.synthetic} synthetic {height}x{width} JPEGs"
        else:
            folder = args.photos or bundled.default_photo_dir()
            description = str(folder)
        index = photos.build_patch_index(folder, cache_dir=pathlib.Path(tmp) / "cache")
        print(f"photos: {description}; {index.summary()}")
        print(
            f"machine: {os.cpu_count()} cores; stream={args.stream}; batch_size={args.batch_size}; "
            f"crop={crop}; patches_per_image={args.patches_per_image}"
        )

        rates = {}
        for workers in (int(w) for w in args.workers.split(",")):
            dataset = make_stream(
                args.stream, index, workers, args.batch_size, crop, args.level,
                args.patches_per_image, args.cache_images,
            )
            rates[workers] = loader_rate(dataset, workers, args.batch_size, args.seconds)
            per = rates[workers] / max(workers, 1)
            print(f"workers={workers}: {rates[workers]:.1f} samples/s ({per:.1f} per worker process)")
        if 0 in rates:
            print(f"per-core rate (0 workers, one OpenCV thread): {rates[0]:.1f} samples/s")

        most = max(rates)
        consumed = args.consumed
        if args.step:
            consumed = step_rate(args.batch_size, crop, args.level, args.seconds)
        ratio = None
        if consumed:
            ratio = rates[most] / consumed
            verdict = "the loader keeps up" if ratio >= 1 else "the LOADER is the bottleneck"
            print(
                f"training step consumes {consumed:.2f} samples/s; loader with {most} workers "
                f"delivers {rates[most]:.1f} ({ratio:.2f}x): {verdict}; workers needed at this "
                f"per-worker rate: {consumed / (rates[most] / max(most, 1)):.1f}"
            )
        if args.json:
            args.json.write_text(json.dumps({
                "stream": args.stream, "shape": f"{args.batch_size}x{crop}x{crop}", "photos": description,
                "patches": index.summary(), "cores": os.cpu_count(), "seconds": args.seconds,
                "samples_per_s": {str(k): v for k, v in rates.items()}, "workers": most,
                "consumed_samples_per_s": consumed, "ratio": ratio,
            }, indent=1))
        print(f"samples_per_s_per_worker={rates[most] / max(most, 1):.3f}")


if __name__ == "__main__":
    main()
