"""The embedded default photo set: public-domain / CC0 photos shipped inside installed packages.

With no data folder given, the IMC job still runs on a fresh machine with no download:
the photos below ship in the scikit-image wheel (``skimage/data``; read from the files
directly, never through ``skimage.data``'s fetchers, which may download) and in
matplotlib's sample data. Their licences, from scikit-image's ``skimage/data/_fetchers.py``
docstrings and the photos' public sources:

==========================  ==========  =================================================
file                        colour      licence
==========================  ==========  =================================================
astronaut.png               RGB         public domain (NASA, Eileen Collins)
chelsea.png                 RGB         CC0 (Stefan van der Walt)
coffee.png                  RGB         CC0 (Rachel Michetti)
rocket.jpg                  RGB         public domain (SpaceX, DSCOVR launch)
hubble_deep_field.jpg       RGB         public domain (NASA)
retina.jpg                  RGB         CC0 1.0 (Mikael Haggstrom, Wikimedia Commons)
ihc.png                     RGB         no known copyright restrictions (CMMI)
camera.png                  grey        CC0 (Lav Varshney)
coins.png                   grey        no known copyright restrictions (Brooklyn Museum)
grass.png                   grey        CC0 (texture)
gravel.png                  grey        CC0 (CC0Textures)
brick.png                   grey        CC0 (CC0Textures)
grace_hopper.jpg            RGB         public domain (US Navy photograph; matplotlib)
==========================  ==========  =================================================

Images with unclear licences (the Middlebury motorcycle pair, the moon) and drawings
(logo, colour wheel) are left out.

Seven RGB photos alone would all land in the training split (the split is by file), so
each photo is cut into 256 x 256 tiles on the same centred grid ``photos.patch_origins``
uses, one PNG file per tile (lossless: no second JPEG compression), in a cache folder.
The split rule then applies per tile: with this set the std >= 32 rule keeps 33 tiles,
29 / 2 / 2 in train / val / test (a test checks all three are non-empty). Neighbouring
tiles of one photo may fall in different splits: the set is for smoke runs and
examples, not for measuring generalisation.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import cv2

from mantra_jax.data import images, photos

# (package, path inside the package, licence) of each bundled photo.
BUNDLED_PHOTOS = (
    ("skimage", "data/astronaut.png", "public domain (NASA)"),
    ("skimage", "data/chelsea.png", "CC0 (Stefan van der Walt)"),
    ("skimage", "data/coffee.png", "CC0 (Rachel Michetti)"),
    ("skimage", "data/rocket.jpg", "public domain (SpaceX)"),
    ("skimage", "data/hubble_deep_field.jpg", "public domain (NASA)"),
    ("skimage", "data/retina.jpg", "CC0 1.0 (Mikael Haggstrom)"),
    ("skimage", "data/ihc.png", "no known copyright restrictions (CMMI)"),
    ("skimage", "data/camera.png", "CC0 (Lav Varshney)"),
    ("skimage", "data/coins.png", "no known copyright restrictions (Brooklyn Museum)"),
    ("skimage", "data/grass.png", "CC0"),
    ("skimage", "data/gravel.png", "CC0 (CC0Textures)"),
    ("skimage", "data/brick.png", "CC0 (CC0Textures)"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "public domain (US Navy)"),
)

TILE_SIZE = 256


def bundled_photo_files() -> list[tuple[Path, str]]:
    """Returns (path, licence) of each bundled photo found in the installed packages."""
    found = []
    for package, inner_path, licence in BUNDLED_PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            path = Path(location) / inner_path
            if path.is_file():
                found.append((path, licence))
                break
    return found


def default_photo_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Returns a folder of 256 x 256 tiles of the bundled photos, writing it on first use.

    The folder lives under ``cache_dir`` (default ``photos.default_cache_dir()``) and is
    named after a hash of the source files' names and sizes, so a package update that
    changes a photo gives a fresh folder. It is written to a temporary folder and
    renamed into place, so concurrent processes never see half of it.

    Raises:
      FileNotFoundError: none of the bundled photos is installed.
    """
    sources = bundled_photo_files()
    if not sources:
        raise FileNotFoundError(
            "no bundled photo found (scikit-image's skimage/data files are missing); "
            "pass a photo folder instead"
        )
    fingerprint = hashlib.sha256(
        repr([(p.name, p.stat().st_size) for p, _ in sources] + [TILE_SIZE]).encode()
    ).hexdigest()[:16]
    base = Path(cache_dir or photos.default_cache_dir()) / "bundled_photos"
    target = base / fingerprint
    if (target / "LICENSES.txt").is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=base, prefix=".staging-"))
    try:
        _write_tiles(sources, staging)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process renamed its copy first; theirs is identical.
            if not (target / "LICENSES.txt").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_tiles(sources: list[tuple[Path, str]], out_dir: Path) -> None:
    lines = [
        "Tiles of photos shipped inside installed Python packages (mantra_jax.data.bundled).",
        "",
    ]
    for path, licence in sources:
        image = images.read_rgb(path)
        stem = path.stem
        (out_dir / stem).mkdir()
        height, width = image.shape[:2]
        rows, cols = height // TILE_SIZE, width // TILE_SIZE
        y0, x0 = (height - rows * TILE_SIZE) // 2, (width - cols * TILE_SIZE) // 2
        for r in range(rows):
            for c in range(cols):
                y, x = y0 + r * TILE_SIZE, x0 + c * TILE_SIZE
                tile = image[y : y + TILE_SIZE, x : x + TILE_SIZE]
                ok, encoded = cv2.imencode(".png", cv2.cvtColor(tile, cv2.COLOR_RGB2BGR))
                if not ok:
                    raise OSError(f"could not encode a tile of {path}")
                (out_dir / stem / f"{stem}_y{y:04d}_x{x:04d}.png").write_bytes(encoded.tobytes())
        lines.append(f"{stem}/: {path.name} ({height}x{width}), {licence}")
    # Written last: its presence marks a complete folder.
    (out_dir / "LICENSES.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
