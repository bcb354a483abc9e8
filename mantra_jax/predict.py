"""Forgery localisation with a trained or converted ManTra-Net checkpoint, from Python or the shell.

From Python (e.g. a notebook), load once and predict many times:

    predictor = Predictor.from_checkpoint("runs/mantranet")
    prob_HxW = predictor.predict(rgb_uint8_HxWx3)        # float32 probabilities in [0, 1]
    rgb, prob_HxW = predictor.predict_file("photo.jpg")

From the shell:

    python -m mantra_jax.predict --checkpoint DIR --out OUTDIR [--npy] IMAGE_OR_FOLDER...

writes for each image OUTDIR/<stem>_mask.png (round(255 p), 8-bit grey), OUTDIR/<stem>_overlay.png
(a JET heat map blended over the photo), with --npy OUTDIR/<stem>.npy (float32 H x W), and one row
of OUTDIR/summary.csv: file, height, width, score (the mean likelihood, the paper's image score),
seconds (reading and predicting; the first image of each new size includes compilation). Folders
are searched recursively. A file that cannot be read or predicted is reported on stderr, listed in
OUTDIR/skipped.csv with the reason, and skipped; the exit status is 1 when no image at all was
processed, 2 when the checkpoint cannot be used. Two inputs with the same stem get "-2", "-3", ... appended to the later outputs.

Images larger than `max_untiled_pixels` are processed tile by tile (mantra_jax.nn.tiled), which
gives the same map in bounded memory; `tile` forces tiling at a given tile size.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from mantra_jax import workdir
from mantra_jax.data import images
from mantra_jax.nn import model, tiled
from mantra_jax.nn.config import ModelConfig
from mantra_jax.train.reporting import ProgressLine

# Measured with the released model on CPU (benchmarks/tiled_memory.py): the whole-image pass
# peaks at about 5.2 KB per pixel (11.3 GB RSS at 2.1 megapixels; XLA asks for 38.5 GB at 12),
# while the tiled pass costs ~11 % more Featex work at the default 512-pixel tiles and a few GB.
# Above 2 megapixels, tiling wins.
DEFAULT_MAX_UNTILED_PIXELS = 2_000_000
OVERLAY_ALPHA = 0.5
SUMMARY_FIELDS = ("file", "height", "width", "score", "seconds")


class Predictor:
    """A ManTra-Net model ready for inference: parameters on the device, compiled once per image
    size (jax.jit caches one executable per shape)."""

    def __init__(
        self,
        cfg: ModelConfig,
        variables: dict,
        *,
        dtype="float32",
        tile: Optional[int] = None,
        max_untiled_pixels: int = DEFAULT_MAX_UNTILED_PIXELS,
        feature_budget_bytes: int = tiled.DEFAULT_FEATURE_BUDGET_BYTES,
    ):
        """`dtype`: the convolutions' computation dtype ("float32" or "bfloat16").
        `tile`: None tiles only images above `max_untiled_pixels` (at tiled.DEFAULT_TILE pixels);
        a number tiles every image at that interior size."""
        if cfg.head != "ladn":
            raise ValueError(
                f"inference needs a ManTra-Net model (head 'ladn'); this one has the {cfg.head!r} head"
            )
        if tile is not None and int(tile) < 1:
            raise ValueError(f"tile must be a positive number of pixels or None, got {tile}")
        if int(max_untiled_pixels) < 0:
            raise ValueError(f"max_untiled_pixels must be >= 0, got {max_untiled_pixels}")
        model.check_variables(variables, cfg)
        self.cfg = cfg
        self.variables = jax.device_put(variables)
        self.dtype = jnp.dtype(dtype)
        if self.dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
            raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
        self.tile = None if tile is None else int(tile)
        self.max_untiled_pixels = int(max_untiled_pixels)
        self.feature_budget_bytes = int(feature_budget_bytes)

    @classmethod
    def from_checkpoint(cls, directory, *, step: Optional[int] = None, **kwargs) -> "Predictor":
        """Any checkpoint directory: a training run (its best step) or converted released weights."""
        from mantra_jax.train import checkpoint  # Orbax is only needed here

        cfg, variables = checkpoint.load_model(directory, step=step)
        return cls(cfg, variables, **kwargs)

    def is_tiled(self, height: int, width: int) -> bool:
        return self.tile is not None or height * width > self.max_untiled_pixels

    def predict(self, rgb) -> np.ndarray:
        """Probabilities (float32 H x W) of an image array: uint8 RGB, or anything
        images.to_rgb_uint8 converts (grey, RGBA, 16-bit, float in [0, 1])."""
        rgb = images.to_rgb_uint8(rgb, "image array")
        height, width = rgb.shape[:2]
        if not self.is_tiled(height, width):
            return tiled.whole_image_probabilities(self.variables, rgb, self.cfg, dtype=self.dtype)
        return tiled.tiled_probabilities(
            self.variables, rgb, self.cfg, tile=self.tile or tiled.DEFAULT_TILE, dtype=self.dtype,
            feature_budget_bytes=self.feature_budget_bytes,
        )

    def predict_file(self, path, *, max_pixels: int = images.DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 RGB image, float32 probabilities) of an image file; raises images.ImageReadError
        naming the file when it cannot be read or holds more than `max_pixels` pixels."""
        rgb = images.read_rgb(path, max_pixels=max_pixels)
        return rgb, self.predict(rgb)


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
def mask_image(prob_HxW) -> np.ndarray:
    """The probability map as 8-bit grey: round(255 p)."""
    return np.rint(np.clip(np.asarray(prob_HxW, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def overlay_image(rgb_HxWx3, prob_HxW, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """A JET heat map of the probabilities (blue 0, red 1) blended over the photo, uint8 RGB."""
    heat = cv2.cvtColor(cv2.applyColorMap(mask_image(prob_HxW), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blend = (1.0 - alpha) * rgb_HxWx3.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.rint(blend).astype(np.uint8)


def image_score(prob_HxW) -> float:
    """The image-level forgery score of the paper: the mean pixel likelihood."""
    return float(np.mean(prob_HxW, dtype=np.float64))


def write_png(path, image) -> None:
    """Writes a grey or RGB uint8 image as PNG (encoded in memory: non-ASCII paths work)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    Path(path).write_bytes(data.tobytes())


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def collect_inputs(paths: Sequence[str], exclude: Optional[Path] = None) -> tuple[list[Path], list[tuple[str, str]], bool]:
    """(image files, (path, reason) of inputs that do not exist, whether a folder was given).

    Folders are searched recursively; files under `exclude` (the output folder) are left out, so
    that earlier outputs are never taken for inputs."""
    files, missing, any_folder = [], [], False
    excluded = exclude.resolve() if exclude is not None else None
    for p in map(Path, paths):
        if p.is_dir():
            any_folder = True
            for f in images.list_images(p):
                if excluded is None or excluded not in f.resolve().parents:
                    files.append(f)
        elif p.is_file():
            files.append(p)
        else:
            missing.append((str(p), "no such file or folder"))
    return files, missing, any_folder


def _unique_stem(stem: str, used: set) -> str:
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}-{n}"
    used.add(name)
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mantra_jax.predict",
        description="ManTra-Net forgery localisation: a probability mask, an overlay and an image "
        "score for each image.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders (recursive)")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (trained or converted)")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--npy", action="store_true", help="also write <stem>.npy, float32 H x W probabilities")
    parser.add_argument("--tile", type=int, default=None,
                        help="tile every image with this interior size in pixels (default: tile only "
                        f"images above --max_untiled_pixels, at {tiled.DEFAULT_TILE})")
    parser.add_argument("--max_untiled_pixels", type=int, default=DEFAULT_MAX_UNTILED_PIXELS,
                        help="larger images are processed tile by tile (default %(default)s)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="computation dtype of the convolutions")
    parser.add_argument("--max_pixels", type=int, default=images.DEFAULT_MAX_PIXELS,
                        help="refuse images with more pixels (decompression bombs; default %(default)s)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with workdir.lock(out, what="predict run"):  # a second run writing this folder is refused
            return _predict_into(args, out)
    except workdir.Locked as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _predict_into(args, out: Path) -> int:
    files, skipped, any_folder = collect_inputs(args.inputs, exclude=out)
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not files:
        print("no image to process", file=sys.stderr)
        _write_skipped(out, skipped)
        return 1
    from mantra_jax.train.checkpoint import CheckpointError

    try:
        predictor = Predictor.from_checkpoint(
            args.checkpoint, dtype=args.dtype, tile=args.tile, max_untiled_pixels=args.max_untiled_pixels
        )
    except (CheckpointError, ValueError) as e:
        print(f"error: cannot use the checkpoint {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    progress = ProgressLine(len(files), "predict", min_interval_s=0.0) if any_folder or len(files) > 1 else None
    used_stems: set = set()
    processed = 0
    with open(out / "summary.csv", "w", newline="") as summary_file:
        summary = csv.writer(summary_file)
        summary.writerow(SUMMARY_FIELDS)
        for i, path in enumerate(files, start=1):
            start = time.perf_counter()
            try:
                rgb, prob = predictor.predict_file(path, max_pixels=args.max_pixels)
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
                reason = str(e) if isinstance(e, images.ImageReadError) else f"{type(e).__name__}: {e}"
                (progress.message if progress is not None else lambda t: print(t, file=sys.stderr))(
                    f"skipped {path}: {reason}")
                skipped.append((str(path), reason))
            else:
                seconds = time.perf_counter() - start
                stem = _unique_stem(path.stem, used_stems)
                write_png(out / f"{stem}_mask.png", mask_image(prob))
                write_png(out / f"{stem}_overlay.png", overlay_image(rgb, prob))
                if args.npy:
                    np.save(out / f"{stem}.npy", prob.astype(np.float32), allow_pickle=False)
                summary.writerow([str(path), prob.shape[0], prob.shape[1], f"{image_score(prob):.6f}", f"{seconds:.3f}"])
                summary_file.flush()
                processed += 1
            if progress is not None:
                progress.update(i, path.name)
    _write_skipped(out, skipped)
    print(f"{processed} image(s) processed, {len(skipped)} skipped; results in {out}", file=sys.stderr)
    return 0 if processed else 1


def _write_skipped(out: Path, skipped):
    path = out / "skipped.csv"
    if not skipped:
        if path.exists():
            os.remove(path)  # a stale list from an earlier run would be misleading
        return
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("file", "error"))
        writer.writerows(skipped)


if __name__ == "__main__":
    sys.exit(main())
