"""Pristine photos: the train / validation / test split and the cached patch index.

A folder of photos (searched recursively, any format ``images.read_rgb`` reads) is
split by image, 8:1:1, from a hash of each file's relative path, so a file keeps its
split when others are added. Each photo is tiled into non-overlapping ``patch`` x
``patch`` squares on a grid centred in the image (the leftover border is shared
equally by both sides); a square whose grey-level intensity standard deviation (ITU-R
BT.601 luma, population std) is below ``min_std`` is rejected, the paper's rule for
flat, uninformative patches.

Photos smaller than ``patch`` in either side are skipped (counted and named in the
warning), not padded: reflected or constant padding would add content no camera made,
which is exactly what the manipulation classifier must learn to notice.

The index is built once and cached as an ``.npz`` (no pickle) keyed by a hash of the
sorted (relative path, size, mtime) list and the parameters, so a large corpus starts
in seconds the second time. Unreadable or corrupt files are skipped and listed once in
a single warning (again on every cache hit, so they are not forgotten).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mantra_jax.data import images
from mantra_jax.errors import UserError

SPLITS = ("train", "val", "test")

# Bumped whenever the index content for the same files would change.
_INDEX_FORMAT_VERSION = 1

# ITU-R BT.601 luma weights (what cv2.COLOR_RGB2GRAY uses), kept in float.
_LUMA_RGB = np.array([0.299, 0.587, 0.114], np.float32)


class NoUsablePhotos(UserError, ValueError):
    """A photo folder without a single usable patch."""


class PatchEntry(NamedTuple):
    """One pristine patch: the photo's path relative to the index root, and its origin."""

    path: str
    y: int
    x: int


@dataclasses.dataclass(frozen=True)
class PatchIndex:
    """The usable patches of a photo folder, per split.

    Attributes:
      root: the photo folder (absolute); entry paths are relative to it (POSIX form).
      patch_size: side of the square patches.
      min_std: the intensity standard deviation below which patches were rejected.
      train, val, test: the patches of each split, sorted by (path, y, x).
      unreadable: relative paths of the files that could not be decoded.
      too_small: relative paths of the photos smaller than ``patch_size``.
      num_images: readable photos that gave at least one patch.
    """

    root: str
    patch_size: int
    min_std: float
    train: tuple[PatchEntry, ...]
    val: tuple[PatchEntry, ...]
    test: tuple[PatchEntry, ...]
    unreadable: tuple[str, ...] = ()
    too_small: tuple[str, ...] = ()
    num_images: int = 0

    def entries(self, split: str) -> tuple[PatchEntry, ...]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return getattr(self, split)

    def image_path(self, entry: PatchEntry) -> Path:
        return Path(self.root) / entry.path

    def settings(self) -> dict:
        """What a training run records of its data: the folder, the patch rules and the patch
        counts (a folder whose photos changed gives other counts)."""
        return {"folder": self.root, "patch": self.patch_size, "min_std": self.min_std,
                "patches": {s: len(self.entries(s)) for s in SPLITS}}

    def require(self, *splits: str) -> None:
        """Raises NoUsablePhotos unless each of `splits` holds a patch (a trainer needs train and val)."""
        empty = [s for s in splits if not self.entries(s)]
        if empty:
            raise NoUsablePhotos(
                f"{self.root}: the {' and '.join(empty)} split(s) hold no {self.patch_size}x{self.patch_size} "
                f"patch ({self.summary().split(': ', 1)[1]}). Photos go to train/val/test 8:1:1 by a hash of "
                f"their path, so a folder of few photos can leave a split empty: add photos")

    def summary(self) -> str:
        return (
            f"{self.root}: {self.num_images} photos, patches train/val/test = "
            f"{len(self.train)}/{len(self.val)}/{len(self.test)} "
            f"({len(self.unreadable)} unreadable, {len(self.too_small)} too small)"
        )


def split_of(relative_path: str | os.PathLike) -> str:
    """Returns "train", "val" or "test" (8:1:1) from a stable hash of the relative path.

    The path is taken in POSIX form, so the split does not depend on the platform.
    """
    posix = Path(relative_path).as_posix()
    # A name that is not UTF-8 hashes its own bytes (surrogateescape); UTF-8 names are unchanged.
    bucket = int.from_bytes(hashlib.sha256(posix.encode("utf-8", "surrogateescape")).digest()[:8], "big") % 10
    if bucket < 8:
        return "train"
    return "val" if bucket == 8 else "test"


def default_cache_dir() -> Path:
    """The per-user cache folder of this project ($XDG_CACHE_HOME or ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mantra_jax"


def patch_origins(
    image_rgb: np.ndarray, patch: int, min_std: float
) -> list[tuple[int, int]]:
    """Returns the (y, x) origins of the grid patches whose intensity std is >= min_std.

    The grid of non-overlapping squares is centred in the image; an image smaller than
    ``patch`` in a side has no patch.
    """
    height, width = image_rgb.shape[:2]
    rows, cols = height // patch, width // patch
    if rows == 0 or cols == 0:
        return []
    y0, x0 = (height - rows * patch) // 2, (width - cols * patch) // 2
    grid = image_rgb[y0 : y0 + rows * patch, x0 : x0 + cols * patch].astype(np.float32)
    luma = grid @ _LUMA_RGB
    stds = luma.reshape(rows, patch, cols, patch).std(axis=(1, 3), dtype=np.float64)
    return [
        (y0 + r * patch, x0 + c * patch)
        for r in range(rows)
        for c in range(cols)
        if stds[r, c] >= min_std
    ]


def build_patch_index(
    folder: str | os.PathLike,
    patch: int = 256,
    min_std: float = 32.0,
    cache_dir: str | os.PathLike | None = None,
    *,
    use_cache: bool = True,
    num_threads: int | None = None,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
) -> PatchIndex:
    """Builds (or loads from the cache) the patch index of a photo folder.

    Args:
      folder: the photo folder, searched recursively.
      patch: side of the square patches.
      min_std: patches with a lower intensity standard deviation are rejected.
      cache_dir: where the index cache lives; None means ``default_cache_dir()``.
      use_cache: False builds from scratch and writes nothing.
      num_threads: decoding threads (OpenCV releases the GIL); None picks up to 8.
      max_pixels: photos above this pixel count are treated as unreadable.

    Raises:
      FileNotFoundError / NotADirectoryError: the folder does not exist.
      NoUsablePhotos (a ValueError): no usable patch in the whole folder.
    """
    root = Path(folder).resolve()
    left: list[tuple[str, str]] = []
    paths = images.list_images(root, left)
    # What cannot be an image file (broken links, link loops, FIFOs, unreadable folders) is
    # reported with the unreadable photos; files of other names are not photos and go unsaid.
    listing_problems = [f"{path}: {reason}" for path, reason in left if not reason.startswith("not an image file name")]
    if not paths:
        raise NoUsablePhotos(
            f"{root}: no image file found (looked recursively for {', '.join(images.IMAGE_SUFFIXES)})"
        )
    relative = [p.relative_to(root).as_posix() for p in paths]
    stats = [p.stat() for p in paths]
    key = _cache_key(relative, stats, patch, min_std, max_pixels)
    cache_file = Path(cache_dir or default_cache_dir()) / "patch_index" / f"{key}.npz"

    loaded = _load_cache(cache_file, relative) if use_cache else None
    if loaded is not None:
        origins_per_image, unreadable, too_small = loaded
        logging.info("patch index of %s loaded from %s", root, cache_file)
    else:
        origins_per_image, unreadable, too_small = _scan(
            root, relative, patch, min_std, max_pixels, num_threads
        )
        if use_cache:
            _write_cache(cache_file, relative, origins_per_image, unreadable, too_small)

    unreadable = listing_problems + list(unreadable)

    per_split: dict[str, list[PatchEntry]] = {s: [] for s in SPLITS}
    num_images = 0
    for rel, origins in zip(relative, origins_per_image):
        if origins:
            num_images += 1
            per_split[split_of(rel)].extend(PatchEntry(rel, y, x) for y, x in origins)
    if num_images == 0:  # refused without the list of every photo: the counts say it
        raise NoUsablePhotos(
            f"{root}: no usable {patch}x{patch} patch: {len(relative)} image files, "
            f"{len(unreadable)} unreadable, {len(too_small)} smaller than {patch} px, the "
            f"others have no patch with intensity std >= {min_std}"
        )
    if unreadable or too_small:
        _warn_skipped(root, unreadable, too_small, patch)
    index = PatchIndex(
        root=str(root),
        patch_size=patch,
        min_std=float(min_std),
        train=tuple(per_split["train"]),
        val=tuple(per_split["val"]),
        test=tuple(per_split["test"]),
        unreadable=tuple(unreadable),
        too_small=tuple(too_small),
        num_images=num_images,
    )
    logging.info("%s", index.summary())
    return index


def _cache_key(
    relative: list[str], stats: list[os.stat_result], patch: int, min_std: float, max_pixels: int
) -> str:
    description = {
        "version": _INDEX_FORMAT_VERSION,
        "patch": int(patch),
        "min_std": float(min_std),
        "max_pixels": int(max_pixels),
        "files": [[rel, st.st_size, st.st_mtime_ns] for rel, st in zip(relative, stats)],
    }
    return hashlib.sha256(json.dumps(description).encode("utf-8")).hexdigest()[:32]


def _scan(
    root: Path,
    relative: list[str],
    patch: int,
    min_std: float,
    max_pixels: int,
    num_threads: int | None,
) -> tuple[list[list[tuple[int, int]]], list[str], list[str]]:
    def scan_one(rel: str) -> tuple[list[tuple[int, int]], str | None, bool]:
        try:
            image = images.read_rgb(root / rel, max_pixels=max_pixels)
        except images.ImageReadError as e:
            return [], str(e), False
        too_small = image.shape[0] < patch or image.shape[1] < patch
        return patch_origins(image, patch, min_std), None, too_small

    threads = num_threads or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(scan_one, relative))
    origins_per_image = [origins for origins, _, _ in results]
    unreadable = [error for _, error, _ in results if error is not None]
    too_small = [rel for rel, (_, _, small) in zip(relative, results) if small]
    return origins_per_image, unreadable, too_small


_WARNED_NAMES = 5  # files named per kind in the warning; the others are counted


def _warn_skipped(root: Path, unreadable: list[str], too_small: list[str], patch: int) -> None:
    lines = []
    for title, names in ((f"unreadable image file(s) skipped under {root}", unreadable),
                         (f"photo(s) smaller than {patch} px skipped under {root}", too_small)):
        if names:
            lines.append(f"{len(names)} {title}:")
            lines.extend(f"  {name}" for name in names[:_WARNED_NAMES])
            if len(names) > _WARNED_NAMES:
                lines.append(f"  ... and {len(names) - _WARNED_NAMES} more (PatchIndex.unreadable / .too_small list them)")
    warnings.warn("\n".join(lines), stacklevel=3)


def _load_cache(
    cache_file: Path, relative: list[str]
) -> tuple[list[list[tuple[int, int]]], list[str], list[str]] | None:
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as data:
            cached_paths = [str(p) for p in data["paths"]]
            patches = data["patches"]
            unreadable = [str(p) for p in data["unreadable"]]
            too_small = [str(p) for p in data["too_small"]]
    except (OSError, KeyError, ValueError) as e:
        logging.warning("ignoring the unreadable patch index cache %s (%s)", cache_file, e)
        return None
    if cached_paths != relative:
        logging.warning("ignoring the patch index cache %s: its file list differs", cache_file)
        return None
    origins_per_image: list[list[tuple[int, int]]] = [[] for _ in relative]
    for image_id, y, x in patches.tolist():
        origins_per_image[image_id].append((y, x))
    return origins_per_image, unreadable, too_small


def _write_cache(
    cache_file: Path,
    relative: list[str],
    origins_per_image: list[list[tuple[int, int]]],
    unreadable: list[str],
    too_small: list[str],
) -> None:
    patches = np.array(
        [(i, y, x) for i, origins in enumerate(origins_per_image) for y, x in origins],
        dtype=np.int64,
    ).reshape(-1, 3)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so concurrent processes never read a half-written cache.
        fd, tmp_name = tempfile.mkstemp(dir=cache_file.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                paths=np.array(relative, dtype=np.str_),
                patches=patches,
                unreadable=np.array(unreadable, dtype=np.str_),
                too_small=np.array(too_small, dtype=np.str_),
            )
        os.replace(tmp_name, cache_file)
    except OSError as e:
        logging.warning("could not write the patch index cache %s (%s)", cache_file, e)
