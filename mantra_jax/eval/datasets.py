"""Public forgery-benchmark layouts: pairing images with ground-truth masks, reading masks.

Images and masks are paired by file stem, accepting the usual mask suffixes (``_gt``,
``_mask``, or the same stem). Presets describe the public layouts:

=========  ====================================================================================
preset     layout
=========  ====================================================================================
casia_v1   CASIA v1.0 tampered images (``Sp/``, ``CM/``, searched recursively) with the public
           ground truth of Pham et al. (github.com/namtpham/casia1groundtruth): ``<stem>_gt.png``.
casia_v2   CASIA v2.0 ``Tp/`` with github.com/namtpham/casia2groundtruth: ``<stem>_gt.png``.
           17 image/mask size mismatches are known: skipped and counted, or resized on request.
coverage   COVERAGE ``image/<n>t.tif`` (forged) with ``mask/<n>forged.tif``; ``image/<n>.tif``
           are the authentic originals (listed by :func:`list_authentic_images`), and the
           ``<n>copy`` / ``<n>paste`` masks are alternatives that are not used.
columbia   Columbia Uncompressed ``4cam_splc/<stem>.tif`` with the colour-coded
           ``4cam_splc/edgemask/<stem>_edgemask.jpg``, decoded by :func:`decode_columbia_edgemask`.
nist16     NIST Nimble 2016 ``probe/`` with ``reference/manipulation/mask/``, paired through the
           pipe-separated ``*manipulation-ref.csv`` index (ProbeFileName -> ProbeMaskFileName)
           found in the mask folder or up to three folders above it; renamed redistributions
           without the index are paired by stem. Masks are inverted: black marks the forgery.
dso1       DSO-1 splicings with same-stem masks, inverted (black marks the forgery).
=========  ====================================================================================

Masks are read as stored (L, RGB, RGBA, 8 or 16 bit), converted to grey and binarised at
> 127; RGBA masks are composited over black first (a transparent pixel is pristine), and a mask
whose values are all 0 or 1 is taken as already binary. Images and masks are both read in
stored pixel order (EXIF orientation ignored) so that they stay aligned.
"""
from __future__ import annotations

import csv
import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from mantra_jax.data import images as image_io

IMAGE_EXTENSIONS = image_io.IMAGE_SUFFIXES  # what the image reader decodes (GIF and WebP included)
MASK_EXTENSIONS = IMAGE_EXTENSIONS
BINARY_THRESHOLD = 127  # forged where the grey mask is > 127
# Columbia edge masks are JPEGs: a channel difference below this is colour noise, not a hue.
_COLUMBIA_HUE_MARGIN = 48


@dataclasses.dataclass(frozen=True)
class Preset:
    """Pairing and decoding rules of one public benchmark layout."""

    name: str
    description: str
    mask_suffixes: tuple[str, ...]  # stripped from mask stems, in order of preference
    forged_image_tag: str = ""  # only image stems ending in it are forged; stripped for pairing
    ignored_mask_suffixes: tuple[str, ...] = ()  # masks of other kinds, never reported unpaired
    invert: bool = False  # masks mark the forgery in black
    decoder: str = "grey"  # "grey" (binarise at > 127) or "columbia" (colour-coded edge mask)
    recursive: bool = False
    index_pattern: str = ""  # glob of a reference index pairing images to masks (NIST)
    typical_dirs: tuple[str, str, str] = ("", "", "")  # images, masks, authentic (documentation)


DEFAULT_PRESET = Preset(
    name="default",
    description="same stem, or the mask stem ending in _gt or _mask",
    mask_suffixes=("_gt", "_mask", ""),
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        DEFAULT_PRESET,
        Preset(
            name="casia_v1",
            description="CASIA v1.0 with the public ground truth (namtpham/casia1groundtruth)",
            mask_suffixes=("_gt", ""),
            recursive=True,
            typical_dirs=("CASIA1/Modified Tp/Tp", "CASIA 1.0 groundtruth", "CASIA1/Au"),
        ),
        Preset(
            name="casia_v2",
            description="CASIA v2.0 with the public ground truth (namtpham/casia2groundtruth)",
            mask_suffixes=("_gt", ""),
            typical_dirs=("CASIA2/Tp", "CASIA 2 Groundtruth", "CASIA2/Au"),
        ),
        Preset(
            name="coverage",
            description="COVERAGE: image/<n>t.tif forged, mask/<n>forged.tif",
            mask_suffixes=("forged",),
            forged_image_tag="t",
            ignored_mask_suffixes=("copy", "paste"),
            typical_dirs=("COVERAGE/image", "COVERAGE/mask", "COVERAGE/image"),
        ),
        Preset(
            name="columbia",
            description="Columbia Uncompressed: colour-coded edgemask/<stem>_edgemask.jpg",
            mask_suffixes=("_edgemask",),
            decoder="columbia",
            typical_dirs=("4cam_splc", "4cam_splc/edgemask", "4cam_auth"),
        ),
        Preset(
            name="nist16",
            description="NIST Nimble 2016: reference index, inverted masks",
            mask_suffixes=("", "_gt", "_mask"),
            invert=True,
            index_pattern="*manipulation*ref*.csv",
            typical_dirs=("NC2016_Test0613/probe", "NC2016_Test0613/reference/manipulation/mask", ""),
        ),
        Preset(
            name="dso1",
            description="DSO-1: same-stem masks, inverted",
            mask_suffixes=("", "_gt", "_mask"),
            invert=True,
            typical_dirs=("tifs-database/DSO-1", "tifs-database/DSO-1-Fake-Images-Masks", ""),
        ),
    )
}


@dataclasses.dataclass(frozen=True)
class Pair:
    """An image and its ground-truth mask."""

    image: Path
    mask: Path
    name: str


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A file left out of the evaluation, and why.

    ``kind``: "image" (an image to score that was not: no mask, unreadable, size mismatch...),
    "mask" (a mask no image uses), "not_forged" (an image the layout or index marks authentic,
    met while pairing forged ones), "authentic" (an authentic image that could not be scored).
    """

    path: str
    reason: str
    kind: str = "image"
    detail: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class UnusableSample(ValueError):
    """A sample that cannot be scored (unreadable file, size mismatch): skipped and counted.

    ``reason`` is the short category the report groups skips by; the message has the details.
    """

    def __init__(self, message: str, reason: str = "unusable"):
        super().__init__(message)
        self.reason = reason


def get_preset(preset: str | Preset | None) -> Preset:
    if preset is None:
        return DEFAULT_PRESET
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[preset]


# --------------------------------------------------------------------------------------------
# Listing and pairing
# --------------------------------------------------------------------------------------------
def _check_folder(folder: str | Path, role: str) -> Path:
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{role} folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{role} folder {folder} is not a folder")
    return folder


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def list_files(folder: str | Path, extensions: Sequence[str], *, recursive: bool = False,
               exclude: Path | None = None, role: str = "images", skipped: list | None = None,
               kind: str = "image") -> list[Path]:
    """Files of ``folder`` with one of ``extensions`` (any case), sorted; raises if none. Entries
    with such a name that are no readable file (a broken link, a link loop, a FIFO, ...) are
    appended to ``skipped`` (when given) as Skipped(path, "unreadable", kind, why)."""
    folder = _check_folder(folder, role)
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    files = []
    for p in sorted(candidates):
        if p.suffix.lower() not in extensions or p.name.startswith("."):
            continue
        problem = image_io.file_problem(p)
        if problem == "a folder, not an image file":
            continue
        if exclude is not None and exclude.resolve() != folder.resolve() and (problem is None or not p.is_symlink()) \
                and _is_within(p, exclude):
            continue
        if problem is None:
            files.append(p)
        elif skipped is not None:
            skipped.append(Skipped(str(p), "unreadable", kind, problem))
    if not files:
        raise ValueError(
            f"{role} folder {folder} holds no files with extensions {', '.join(extensions)}"
            f"{' (searched recursively)' if recursive else ''}")
    return files


def _strip_suffix(stem: str, suffix: str) -> str | None:
    if not suffix:
        return stem
    if len(stem) > len(suffix) and stem.lower().endswith(suffix.lower()):
        return stem[: -len(suffix)]
    return None


def _find_index(masks_dir: Path, pattern: str) -> Path | None:
    """The first reference index matching ``pattern`` in ``masks_dir`` or up to 3 folders above."""
    folder = masks_dir.resolve()
    for _ in range(4):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        if folder.parent == folder:
            break
        folder = folder.parent
    return None


def _read_index(index_path: Path) -> dict[str, str]:
    """Probe file name -> mask file name ('' for probes without a mask) from a NIST index."""
    with open(index_path, newline="") as f:
        reader = csv.DictReader(f, delimiter="|")
        missing = {"ProbeFileName", "ProbeMaskFileName"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{index_path}: reference index lacks the columns {sorted(missing)}")
        return {Path(row["ProbeFileName"]).name: Path(row["ProbeMaskFileName"] or "").name
                for row in reader if row.get("ProbeFileName")}


def pair_images_and_masks(images_dir: str | Path, masks_dir: str | Path,
                          preset: str | Preset | None = None) -> tuple[list[Pair], list[Skipped]]:
    """Pairs every image of ``images_dir`` with its mask in ``masks_dir``.

    Returns the pairs (sorted by name) and the files left out, each with a reason: images
    without a mask (or with several equally good candidates), masks no image uses, and images
    that the layout marks authentic. Raises for a missing or empty folder, naming it.
    """
    preset = get_preset(preset)
    images_dir = _check_folder(images_dir, "images")
    masks_dir = _check_folder(masks_dir, "masks")
    same_folder = images_dir.resolve() == masks_dir.resolve()
    skipped: list[Skipped] = []
    images = list_files(images_dir, IMAGE_EXTENSIONS, recursive=preset.recursive, exclude=masks_dir,
                        role="images", skipped=skipped)
    masks = list_files(masks_dir, MASK_EXTENSIONS, recursive=preset.recursive, role="masks", skipped=skipped,
                       kind="mask")
    mask_suffixes = preset.mask_suffixes
    if same_folder:
        # A file cannot be its own mask: only suffixed stems are masks, the rest are images.
        mask_suffixes = tuple(s for s in mask_suffixes if s)
        if not mask_suffixes:
            raise ValueError(f"images and masks share the folder {images_dir}, but preset {preset.name!r} "
                             "pairs by identical stems; give separate folders")
        masks = [m for m in masks if any(_strip_suffix(m.stem, s) is not None for s in mask_suffixes)]
        mask_set = set(masks)
        images = [p for p in images if p not in mask_set]

    forged_images = []
    for image in images:
        if preset.forged_image_tag and _strip_suffix(image.stem, preset.forged_image_tag) is None:
            skipped.append(Skipped(str(image), "authentic by layout", "not_forged",
                                   f"preset {preset.name!r}: only stems ending in {preset.forged_image_tag!r} "
                                   "are forged; pass the folder as --authentic to score these"))
        else:
            forged_images.append(image)

    index_path = _find_index(masks_dir, preset.index_pattern) if preset.index_pattern else None
    if index_path is not None:
        pairs, used = _pair_by_index(forged_images, masks, _read_index(index_path), index_path, skipped)
    else:
        pairs, used = _pair_by_stem(forged_images, masks, preset, mask_suffixes, skipped)

    for mask in masks:
        if mask in used:
            continue
        if any(_strip_suffix(mask.stem, s) is not None for s in preset.ignored_mask_suffixes if s):
            continue
        skipped.append(Skipped(str(mask), "unpaired mask", "mask", "no image has this mask"))
    if not pairs:
        raise ValueError(
            f"no image of {images_dir} pairs with a mask of {masks_dir} (preset {preset.name!r}: "
            f"{preset.description}); first images: {[p.name for p in images[:3]]}, "
            f"first masks: {[m.name for m in masks[:3]]}")
    return sorted(pairs, key=lambda p: p.name), skipped


def _pair_by_stem(images, masks, preset, mask_suffixes, skipped):
    # Every mask offers itself under the stem left after each suffix it carries; a lower
    # suffix position is a stronger claim ("x_gt.png" beats "x.png" for image "x").
    offers: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for mask in masks:
        for rank, suffix in enumerate(mask_suffixes):
            key = _strip_suffix(mask.stem, suffix)
            if key is not None:
                offers[key.lower()].append((rank, mask))

    images_by_key: dict[str, list[Path]] = defaultdict(list)
    for image in images:
        stem = image.stem
        if preset.forged_image_tag:
            stem = _strip_suffix(stem, preset.forged_image_tag)
        images_by_key[stem.lower()].append(image)

    pairs, used = [], set()
    for key, same_key_images in images_by_key.items():
        if len(same_key_images) > 1:
            for image in same_key_images:
                skipped.append(Skipped(str(image), "ambiguous image", "image",
                                       f"{len(same_key_images)} images share the stem {key!r}"))
            continue
        image = same_key_images[0]
        candidates = offers.get(key, [])
        if not candidates:
            skipped.append(Skipped(str(image), "no mask", "image",
                                   f"no mask named like {image.stem!r} (suffixes {list(mask_suffixes)})"))
            continue
        best_rank = min(rank for rank, _ in candidates)
        best = sorted({m for rank, m in candidates if rank == best_rank})
        if len(best) > 1:
            skipped.append(Skipped(str(image), "ambiguous mask", "image",
                                   f"equally good masks: {[m.name for m in best]}"))
            continue
        pairs.append(Pair(image=image, mask=best[0], name=image.stem))
        used.add(best[0])
    return pairs, used


def _pair_by_index(images, masks, index, index_path, skipped):
    masks_by_name = {m.name: m for m in masks}
    pairs, used = [], set()
    for image in images:
        if image.name not in index:
            skipped.append(Skipped(str(image), "not in index", "image",
                                   f"{image.name} is not listed in {index_path}"))
            continue
        mask_name = index[image.name]
        if not mask_name:
            skipped.append(Skipped(str(image), "authentic by index", "not_forged",
                                   f"{index_path.name} lists no mask for it"))
            continue
        mask = masks_by_name.get(mask_name)
        if mask is None:
            skipped.append(Skipped(str(image), "no mask", "image",
                                   f"{index_path.name} names the mask {mask_name}, absent from the masks folder"))
            continue
        pairs.append(Pair(image=image, mask=mask, name=image.stem))
        used.add(mask)
    return pairs, used


def list_authentic_images(folder: str | Path, preset: str | Preset | None = None,
                          skipped: list | None = None) -> list[Path]:
    """The authentic images of ``folder``; with a tagged layout (COVERAGE), the untagged stems.
    Unreadable entries go to ``skipped`` as in `list_files`."""
    preset = get_preset(preset)
    images = list_files(folder, IMAGE_EXTENSIONS, recursive=preset.recursive, role="authentic images",
                        skipped=skipped, kind="authentic")
    if preset.forged_image_tag:
        images = [p for p in images if _strip_suffix(p.stem, preset.forged_image_tag) is None]
        if not images:
            raise ValueError(f"authentic images folder {folder} holds no image whose stem lacks the forged tag "
                             f"{preset.forged_image_tag!r} of preset {preset.name!r}")
    return images


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def _to_uint8(raw: np.ndarray, path: Path) -> np.ndarray:
    if raw.dtype == np.uint8:
        return raw
    if raw.dtype == np.uint16:
        return (raw.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    if raw.dtype in (np.float32, np.float64):
        top = 1.0 if float(np.nanmax(raw)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(raw) * (255.0 / top), 0, 255).round().astype(np.uint8)
    raise UnusableSample(f"{path}: unsupported mask sample type {raw.dtype}", "unsupported mask")


def _mask_grey(raw: np.ndarray, path: Path) -> np.ndarray:
    raw = _to_uint8(raw, path)
    if raw.ndim == 2:
        return raw
    if raw.ndim == 3 and raw.shape[2] == 1:
        return raw[:, :, 0]
    if raw.ndim == 3 and raw.shape[2] == 3:
        return cv2.cvtColor(raw, cv2.COLOR_BGR2GRAY)
    if raw.ndim == 3 and raw.shape[2] == 4:
        # Over black: a transparent pixel is pristine whatever colour it stores.
        grey = cv2.cvtColor(raw[:, :, :3], cv2.COLOR_BGR2GRAY).astype(np.uint16)
        return (grey * raw[:, :, 3].astype(np.uint16) // 255).astype(np.uint8)
    raise UnusableSample(f"{path}: unsupported mask layout {raw.shape}", "unsupported mask")


def binarize_grey_mask(grey_HxW: np.ndarray) -> np.ndarray:
    """uint8 {0, 1}: forged where grey > 127, or where it is 1 in a mask stored as 0/1."""
    grey = np.asarray(grey_HxW)
    if grey.size and int(grey.max()) <= 1:
        return (grey >= 1).astype(np.uint8)
    return (grey > BINARY_THRESHOLD).astype(np.uint8)


def decode_columbia_edgemask(rgb_HxWx3: np.ndarray) -> np.ndarray:
    """Decodes a Columbia Uncompressed colour-coded mask into a filled region mask, uint8 {0, 1}.

    The Columbia edge masks (JPEG) colour the two source regions of a splicing: red for the
    host (authentic) image, green for the spliced region, each in two shades, one of which marks
    the band along their common boundary; the shades are a boundary annotation, not classes.
    (This reading follows public evaluation code, PhotoHolmes taking the green channel as the
    forgery, and the IML-ViT / IMDL-BenCo maintainers' advice to merge the two reds and the two
    greens; the dataset's README is not reachable from here.) A pixel is forged when its green
    channel exceeds its red one by a clear margin, authentic in the opposite case. Pixels of
    neither hue (black, white, grey, yellow, JPEG ringing) join the nearer of the two regions,
    so an unlabelled boundary band is split down its middle, as PSCC-Net's authors describe.
    """
    rgb = np.asarray(rgb_HxWx3)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"a Columbia edge mask is colour-coded; got an array of shape {rgb.shape}")
    red = rgb[:, :, 0].astype(np.int16)
    green = rgb[:, :, 1].astype(np.int16)
    forged = green - red > _COLUMBIA_HUE_MARGIN
    authentic = red - green > _COLUMBIA_HUE_MARGIN
    if not forged.any() and not authentic.any():
        raise ValueError("not a Columbia colour-coded mask: no red or green region found")
    undecided = ~(forged | authentic)
    if undecided.any():
        if not authentic.any():
            forged = np.ones_like(forged)
        elif forged.any():
            # distanceTransform measures the distance to the nearest zero pixel.
            to_forged = cv2.distanceTransform((~forged).astype(np.uint8), cv2.DIST_L2, 5)
            to_authentic = cv2.distanceTransform((~authentic).astype(np.uint8), cv2.DIST_L2, 5)
            forged = forged | (undecided & (to_forged < to_authentic))
    return forged.astype(np.uint8)


def read_mask(path: str | Path, *, invert: bool | None = None, preset: str | Preset | None = None) -> np.ndarray:
    """Reads a ground-truth mask as uint8 {0, 1}, 1 = forged.

    ``invert``: None follows the preset (NIST16 and DSO-1 mark the forgery in black); True or
    False forces it. Columbia masks are decoded from their colours before any inversion.
    """
    path = Path(path)
    preset = get_preset(preset)
    raw = _read(image_io.read_stored, path)  # 16 bits and alpha kept, no EXIF orientation
    if preset.decoder == "columbia":
        raw = _to_uint8(raw, path)
        if raw.ndim != 3 or raw.shape[2] < 3:
            raise UnusableSample(f"{path}: preset 'columbia' expects a colour-coded mask, got shape {raw.shape}",
                                 "undecodable mask")
        try:
            mask = decode_columbia_edgemask(cv2.cvtColor(raw[:, :, :3], cv2.COLOR_BGR2RGB))
        except ValueError as e:
            raise UnusableSample(f"{path}: {e}", "undecodable mask") from e
    else:
        mask = binarize_grey_mask(_mask_grey(raw, path))
    if preset.invert if invert is None else invert:
        mask = 1 - mask
    return mask


def read_rgb(path: str | Path) -> np.ndarray:
    """Reads an image as uint8 HxWx3 RGB in stored pixel order, ignoring any EXIF orientation.

    A ground-truth mask carries no orientation of its own and annotates the stored raster, so
    the image is read the same way (``images.read_rgb(apply_orientation=False)``: the project's
    conversions and checks, an oversized image included); any failure is an UnusableSample.
    """
    return _read(lambda p: image_io.read_rgb(p, apply_orientation=False), path)


def _read(reader, path: str | Path) -> np.ndarray:
    try:
        return reader(path)
    except image_io.ImageReadError as e:
        raise UnusableSample(str(e), "unreadable") from e


def fit_mask(mask_HxW: np.ndarray, image_shape: Iterable[int], *, resize: bool, name: str) -> np.ndarray:
    """The mask at the image's size: unchanged, resized (nearest) on request, else UnusableSample."""
    height, width = tuple(image_shape)[:2]
    if mask_HxW.shape == (height, width):
        return mask_HxW
    if not resize:
        raise UnusableSample(f"{name}: size mismatch, image {height}x{width}, mask "
                             f"{mask_HxW.shape[0]}x{mask_HxW.shape[1]} (--resize_masks stretches such masks to the "
                             "image, which is right only when the image was scaled, not cropped)",
                             "size mismatch")
    return cv2.resize(mask_HxW, (width, height), interpolation=cv2.INTER_NEAREST)


def load_pair(pair: Pair, *, invert_masks: bool | None = None, preset: str | Preset | None = None,
              resize_masks: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, {0,1} mask at the image's size); UnusableSample for a pair to be skipped."""
    rgb = read_rgb(pair.image)
    mask = read_mask(pair.mask, invert=invert_masks, preset=preset)
    return rgb, fit_mask(mask, rgb.shape, resize=resize_masks, name=pair.name)
