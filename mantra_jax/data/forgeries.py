"""Synthetic forgeries for training the localisation network (the paper's four synthetic sets).

Each generator takes a pristine uint8 RGB patch P (H x W x 3), a uint8 mask M (H x W, {0, 1})
and a `numpy.random.Generator`, and returns `(image, mask)`: the forged uint8 image of the same
shape and the uint8 {0, 1} map of the pixels it forged.

- `enhancement`: `Z = P * (1 - M) + y(P) * M` with y a random IMC manipulation (the paper's
  recipe); by default y is drawn from `mantra_jax.imc.manipulations`.
- `removal`: OpenCV inpainting (Telea or Navier-Stokes) of the masked region.
- `splicing`: a region of another pristine photo (the donor), optionally resized and rotated,
  pasted where the mask is; the returned mask is where donor pixels landed. With
  `donor_manipulate` the donor is first given another processing history (by default a random
  IMC manipulation): with a donor of the same photo, the splice then differs from its
  surroundings by that history alone, not by content.
- `copy_move`: a region of the same photo copied elsewhere (translation with optional scale and
  rotation). Convention: only the pasted target region counts as forged, as in CASIA-style
  ground truth; the source region is left untouched and marked only with `mark_source=True`.

Blending. Whenever a region is optionally "feathered", the blend weight ramps from 0 at the
mask's outline to 1 at `feather` pixels inside it (never outside), so pixels outside the
returned mask are always exactly the pristine ones and every pixel the forgery touched is
labelled forged (some, near the outline, only faintly changed). Where the weight is 1 the
pixels are exactly those of the manipulated / donor / copied image.

`postprocess` re-encodes a whole image as JPEG and/or downscales and upscales it back, as
augmentation; `synthesize` is the per-sample entry point of the data pipeline (`forge` makes
its forgery of one kind over a given mask). A pristine sample returned by `synthesize`
(probability `pristine_share`) has an all-zero mask and kind id `PRISTINE_ID` (-1); forged
samples have the index of their kind in FORGERY_TYPES.

Everything is module-level, numpy + OpenCV only (no JAX), and deterministic given the rng, so
it can run in data-loader worker processes.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from mantra_jax.data import masks as masks_lib

FORGERY_TYPES = ("splicing", "copy_move", "removal", "enhancement")
PRISTINE_ID = -1
MIN_PATCH_SIDE = 16
# Every synthesised copy-move is resampled (scaled, rotated or shifted by a fraction of a pixel).
# An exact whole-pixel copy differs from the photo only along its outline: trained to mark its
# interior, a network can only learn content priors (where forgeries tend to lie), not traces.
COPY_MOVE_SUBPIXEL_PROB = 1.0

Manipulation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


# --------------------------------------------------------------------------------------------
# Input checks and shared helpers
# --------------------------------------------------------------------------------------------
def _check_image(image, name: str, where: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"forgeries.{where}: {name} must be a numpy array, "
                         f"got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"forgeries.{where}: {name} must be uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"forgeries.{where}: {name} must be H x W x 3 (RGB), "
                         f"got shape {image.shape}")
    if min(image.shape[:2]) < MIN_PATCH_SIDE:
        raise ValueError(f"forgeries.{where}: {name} is {image.shape[0]}x{image.shape[1]}, "
                         f"below the minimum {MIN_PATCH_SIDE}x{MIN_PATCH_SIDE}")
    return np.ascontiguousarray(image)


def _check_mask(mask, shape, where: str) -> np.ndarray:
    if not isinstance(mask, np.ndarray):
        raise ValueError(f"forgeries.{where}: mask must be a numpy array, "
                         f"got {type(mask).__name__}")
    if mask.shape != tuple(shape):
        raise ValueError(f"forgeries.{where}: mask shape {mask.shape} does not match the "
                         f"patch's {tuple(shape)}")
    if mask.dtype == np.bool_:
        mask = mask.astype(np.uint8)
    if mask.dtype != np.uint8:
        raise ValueError(f"forgeries.{where}: mask must be uint8 (or bool), got {mask.dtype}")
    if mask.max(initial=0) > 1:
        raise ValueError(f"forgeries.{where}: mask values must be in {{0, 1}}, "
                         f"found {int(mask.max())}")
    if not mask.any():
        raise ValueError(f"forgeries.{where}: mask is empty; a forgery needs a region")
    return np.ascontiguousarray(mask)


def _check_rng(rng, where: str):
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"forgeries.{where}: rng must be a numpy.random.Generator, "
                         f"got {type(rng).__name__}")


def _check_range(values, name: str, where: str, low=None, high=None):
    try:
        first, last = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"forgeries.{where}: {name} must be a (low, high) pair, "
                         f"got {values!r}") from None
    if first > last or (low is not None and first < low) or (high is not None and last > high):
        raise ValueError(f"forgeries.{where}: {name} must satisfy {low} <= low <= high <= "
                         f"{high}, got {values!r}")
    return first, last


def _sample_feather(rng, feather_prob, feather_range) -> float:
    """Feather width in pixels; 1 means a hard edge."""
    if rng.random() < feather_prob:
        return float(rng.uniform(*feather_range))
    return 1.0


def inward_alpha(mask: np.ndarray, feather: float) -> np.ndarray:
    """Blend weight in [0, 1]: 0 outside `mask`, ramping to 1 at `feather` pixels inside it.

    The distance is to the nearest pixel outside the mask; the image border does not count as
    an outline (OpenCV treats beyond-the-image as inside), so a region touching the border is
    not faded there. The ramp is shortened for thin regions so that some pixels reach weight 1.
    """
    mask = np.ascontiguousarray(mask, np.uint8)
    if feather <= 1.0:
        return mask.astype(np.float32)
    distance = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    feather = max(1.0, min(float(feather), float(distance.max())))
    return np.minimum(distance / feather, 1.0).astype(np.float32)


def _blend(base: np.ndarray, overlay: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """base + alpha * (overlay - base), rounded; exact where alpha is 0 or 1."""
    out = base.copy()
    inside = alpha > 0
    # Only the pixels under the mask are computed: masks are mostly small, and this is the
    # costliest step of a generator otherwise.
    weight = alpha[inside][:, None]
    under = base[inside].astype(np.float32)
    # A convex combination of values in [0, 255] stays in range, so no clipping is needed.
    out[inside] = np.rint(under + weight * (overlay[inside].astype(np.float32) - under))
    return out


def _is_integer_translation(scale, angle):
    return scale == 1.0 and angle == 0.0


def _warp(image, matrix, size, integer_translation, border_mode):
    """Affine warp; nearest-neighbour for integer shifts so pixels are copied exactly."""
    flags = cv2.INTER_NEAREST if integer_translation else cv2.INTER_LINEAR
    return cv2.warpAffine(image, matrix, size, flags=flags, borderMode=border_mode,
                          borderValue=0)


def _covered(source_shape, matrix, size, integer_translation):
    """Where the warped image takes its values from inside the source (not its border)."""
    ones = np.ones(source_shape, np.float32)
    weight = _warp(ones, matrix, size, integer_translation, cv2.BORDER_CONSTANT)
    return (weight >= 1.0 - 1e-3).astype(np.uint8)


def _sample_scale_angle(rng, scale_prob, scale_range, rotate_prob, angle_range):
    scale = 1.0
    if rng.random() < scale_prob:
        scale = math.exp(rng.uniform(math.log(scale_range[0]), math.log(scale_range[1])))
    angle = 0.0
    if rng.random() < rotate_prob:
        angle = float(rng.uniform(*angle_range))
    return scale, angle


def _similarity(center_from, center_to, angle, scale):
    """2x3 matrix rotating/scaling about `center_from` (x, y) and moving it to `center_to`."""
    matrix = cv2.getRotationMatrix2D((float(center_from[0]), float(center_from[1])),
                                     angle, scale)
    matrix[:, 2] += np.asarray(center_to, np.float64) - np.asarray(center_from, np.float64)
    return matrix


# --------------------------------------------------------------------------------------------
# The four generators
# --------------------------------------------------------------------------------------------
def imc_manipulation(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random manipulation from the IMC bank (the default `manipulate` of `enhancement`)."""
    # Imported lazily: the bank is a separate, heavier module that masks/splicing do not need.
    from mantra_jax.imc import manipulations
    return manipulations.apply(manipulations.sample_leaf(rng), image, rng)


def enhancement(patch: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                manipulate: Manipulation | None = None, *, feather_prob: float = 0.5,
                feather_range: tuple[float, float] = (2.0, 8.0)):
    """`Z = P * (1 - M) + y(P) * M` with y = `manipulate` (default: a random IMC manipulation).

    With probability `feather_prob` the blend weight is feathered inwards over a width drawn
    from `feather_range` pixels; otherwise M is the hard binary mask. Returns (Z, M).
    """
    where = "enhancement"
    patch = _check_image(patch, "patch", where)
    mask = _check_mask(mask, patch.shape[:2], where)
    _check_rng(rng, where)
    _check_range(feather_range, "feather_range", where, low=1.0)
    manipulate = imc_manipulation if manipulate is None else manipulate
    # A copy, so that a manipulation working in place cannot alter the caller's patch.
    manipulated = manipulate(patch.copy(), rng)
    if (not isinstance(manipulated, np.ndarray) or manipulated.dtype != np.uint8
            or manipulated.shape != patch.shape):
        got = (f"{manipulated.dtype} {manipulated.shape}" if isinstance(manipulated, np.ndarray)
               else type(manipulated).__name__)
        raise ValueError(f"forgeries.enhancement: manipulate must return a uint8 image of the "
                         f"patch's shape {patch.shape}, got {got}")
    alpha = inward_alpha(mask, _sample_feather(rng, feather_prob, feather_range))
    return _blend(patch, manipulated, alpha), mask


def removal(patch: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *,
            radius_range: tuple[int, int] = (2, 5)):
    """Inpaints the masked region with cv2.inpaint, Telea or Navier-Stokes at random.

    The inpainting radius is drawn uniformly from the integers in `radius_range`. Returns
    (image, mask); pixels outside the mask are the patch's own. Its cost grows with the
    radius squared times the masked area (about 13 ms at radius 2 and 70 ms at radius 7 for a
    half-covered 256x256 patch on one core), hence the small default range.
    """
    where = "removal"
    patch = _check_image(patch, "patch", where)
    mask = _check_mask(mask, patch.shape[:2], where)
    _check_rng(rng, where)
    low, high = _check_range(radius_range, "radius_range", where, low=1)
    method = cv2.INPAINT_TELEA if rng.random() < 0.5 else cv2.INPAINT_NS
    radius = int(rng.integers(int(low), int(high) + 1))
    # Inpainting is per channel, so RGB order needs no conversion.
    inpainted = cv2.inpaint(patch, mask, radius, method)
    return np.where(mask[..., None].astype(bool), inpainted, patch), mask


def splicing(patch: np.ndarray, donor: np.ndarray, mask: np.ndarray,
             rng: np.random.Generator, *, resize_prob: float = 0.5,
             scale_range: tuple[float, float] = (0.5, 2.0), rotate_prob: float = 0.3,
             angle_range: tuple[float, float] = (-45.0, 45.0), feather_prob: float = 0.5,
             feather_range: tuple[float, float] = (2.0, 8.0),
             donor_manipulate: Manipulation | None = None):
    """Pastes a region of `donor` (another pristine photo, any size) where `mask` is.

    `donor_manipulate`, when given, processes the whole donor first (e.g. `imc_manipulation`:
    resampled, recompressed, noised, filtered), so the pasted pixels carry another history.

    The donor is scaled (probability `resize_prob`, factor log-uniform in `scale_range`),
    rotated (probability `rotate_prob`, degrees uniform in `angle_range`) and placed so that a
    random donor point lands on the centre of the mask's bounding box, chosen so that the
    donor covers that box whenever it is large enough. With neither scaling nor rotation the
    shift is a whole number of pixels and donor pixels are copied exactly. The edge is feathered
    inwards with probability `feather_prob`. Returns (image, pasted), where `pasted` is the part
    of `mask` that received donor pixels.
    """
    where = "splicing"
    patch = _check_image(patch, "patch", where)
    donor = _check_image(donor, "donor", where)
    mask = _check_mask(mask, patch.shape[:2], where)
    _check_rng(rng, where)
    scale_range = _check_range(scale_range, "scale_range", where, low=1e-3)
    _check_range(angle_range, "angle_range", where)
    _check_range(feather_range, "feather_range", where, low=1.0)
    height, width = patch.shape[:2]
    if donor_manipulate is not None:
        donor = donor_manipulate(donor.copy(), rng)
    donor_h, donor_w = donor.shape[:2]

    scale, angle = _sample_scale_angle(rng, resize_prob, scale_range, rotate_prob, angle_range)
    rows, cols = np.nonzero(mask)
    target_center = np.array([(cols.min() + cols.max()) / 2, (rows.min() + rows.max()) / 2])
    box_w, box_h = cols.max() - cols.min() + 1, rows.max() - rows.min() + 1
    cos, sin = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    # Half extent of the mask's bounding box seen in donor coordinates.
    half = np.array([cos * box_w + sin * box_h, sin * box_w + cos * box_h]) / (2 * scale)
    donor_center = np.empty(2)
    for axis, extent in enumerate((donor_w, donor_h)):
        low, high = half[axis] - 0.5, extent - 0.5 - half[axis]
        donor_center[axis] = (rng.uniform(low, high) if low < high
                              else (extent - 1) / 2 + rng.uniform(-0.5, 0.5))
    integer_translation = _is_integer_translation(scale, angle)
    if integer_translation:
        donor_center = target_center - np.round(target_center - donor_center)
    matrix = _similarity(donor_center, target_center, angle, scale)
    warped = _warp(donor, matrix, (width, height), integer_translation, cv2.BORDER_REFLECT_101)
    pasted = mask & _covered(donor.shape[:2], matrix, (width, height), integer_translation)
    if not pasted.any():
        # Only possible with a donor much smaller than the mask: stretch it over the patch.
        warped = cv2.resize(donor, (width, height), interpolation=cv2.INTER_LINEAR)
        pasted = mask.copy()
    alpha = inward_alpha(pasted, _sample_feather(rng, feather_prob, feather_range))
    return _blend(patch, warped, alpha), pasted


def copy_move(patch: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *,
              mark_source: bool = False, scale_prob: float = 0.3,
              scale_range: tuple[float, float] = (0.75, 1.33), rotate_prob: float = 0.3,
              angle_range: tuple[float, float] = (-30.0, 30.0), feather_prob: float = 0.3,
              feather_range: tuple[float, float] = (2.0, 6.0),
              min_shift_fraction: float = 0.1, tries: int = 10, subpixel_prob: float = 0.0):
    """Copies the region `mask` of `patch` (the source) to another place in the same patch.

    The copy is scaled (probability `scale_prob`) and rotated (probability `rotate_prob`)
    about the source centroid and moved by at least `min_shift_fraction` of the shorter side;
    among `tries` random destinations the first one that puts at least half of the copy
    outside the source is taken (else the one with most pixels outside it), so the copy is a
    real displacement. The target's edge is feathered inwards with probability
    `feather_prob`. A copy neither scaled nor rotated is moved by a whole number of pixels (an
    exact copy) unless, with probability `subpixel_prob`, its shift keeps a random fraction of a
    pixel: it is then resampled by bilinear interpolation like a scaled or rotated copy.
    Returns (image, target), or (image, target | source) with `mark_source`.
    """
    where = "copy_move"
    patch = _check_image(patch, "patch", where)
    source = _check_mask(mask, patch.shape[:2], where)
    _check_rng(rng, where)
    scale_range = _check_range(scale_range, "scale_range", where, low=1e-3)
    _check_range(angle_range, "angle_range", where)
    _check_range(feather_range, "feather_range", where, low=1.0)
    if tries < 1:
        raise ValueError(f"forgeries.copy_move: tries must be >= 1, got {tries}")
    height, width = patch.shape[:2]
    size = (width, height)

    scale, angle = _sample_scale_angle(rng, scale_prob, scale_range, rotate_prob, angle_range)
    integer_translation = _is_integer_translation(scale, angle)
    if integer_translation and subpixel_prob > 0 and rng.random() < subpixel_prob:
        integer_translation = False
    rows, cols = np.nonzero(source)
    source_center = np.array([cols.mean(), rows.mean()])
    min_shift = max(2.0, min_shift_fraction * min(height, width))
    wanted_outside = 0.5 * scale * scale * rows.size
    outside_source = 1 - source

    best_matrix, best_target, best_outside = None, None, 0
    for _ in range(tries):
        shift = rng.uniform([0, 0], [width - 1, height - 1]) - source_center
        if integer_translation:
            shift = np.round(shift)
        if np.hypot(*shift) < min_shift:
            continue
        matrix = _similarity(source_center, source_center + shift, angle, scale)
        target = (_warp(source, matrix, size, integer_translation, cv2.BORDER_CONSTANT)
                  & _covered(source.shape, matrix, size, integer_translation))
        outside = cv2.countNonZero(target & outside_source)
        if outside > best_outside:
            best_matrix, best_target, best_outside = matrix, target, outside
            if outside >= wanted_outside:
                break
    if best_matrix is None:
        # No random destination worked (very large mask): move one source pixel onto one
        # pixel outside the source, which both exist since the mask is neither empty nor full.
        integer_translation = True
        pick = int(rng.integers(rows.size))
        free_rows, free_cols = np.nonzero(outside_source)
        if free_rows.size == 0:
            raise ValueError("forgeries.copy_move: mask covers the whole patch; nothing to "
                             "copy onto")
        free = int(rng.integers(free_rows.size))
        shift = np.array([free_cols[free] - cols[pick], free_rows[free] - rows[pick]], float)
        best_matrix = _similarity(source_center, source_center + shift, 0.0, 1.0)
        best_target = (_warp(source, best_matrix, size, True, cv2.BORDER_CONSTANT)
                       & _covered(source.shape, best_matrix, size, True))
    copied = _warp(patch, best_matrix, size, integer_translation, cv2.BORDER_REFLECT_101)
    alpha = inward_alpha(best_target, _sample_feather(rng, feather_prob, feather_range))
    image = _blend(patch, copied, alpha)
    forged = best_target | source if mark_source else best_target
    return image, forged


# --------------------------------------------------------------------------------------------
# Whole-image post-processing and the per-sample entry point
# --------------------------------------------------------------------------------------------
def postprocess(image: np.ndarray, rng: np.random.Generator, *, jpeg_prob: float = 0.5,
                jpeg_quality_range: tuple[int, int] = (60, 95), downscale_prob: float = 0.3,
                downscale_range: tuple[float, float] = (0.5, 0.9)) -> np.ndarray:
    """Whole-image augmentation: downscale and back up, then JPEG re-encode (each optional).

    Downscaling (probability `downscale_prob`, factor uniform in `downscale_range`) uses area
    averaging and comes back with bilinear or bicubic interpolation; JPEG (probability
    `jpeg_prob`, quality uniform over the integers in `jpeg_quality_range`) is encoded from
    the right channel order. The shape is preserved.
    """
    where = "postprocess"
    image = _check_image(image, "image", where)
    _check_rng(rng, where)
    quality_low, quality_high = _check_range(jpeg_quality_range, "jpeg_quality_range", where,
                                             low=0, high=100)
    factor_low, factor_high = _check_range(downscale_range, "downscale_range", where,
                                           low=1e-3, high=1.0)
    height, width = image.shape[:2]
    out = image
    if rng.random() < downscale_prob:
        factor = rng.uniform(factor_low, factor_high)
        small = (max(1, int(round(width * factor))), max(1, int(round(height * factor))))
        upscale = cv2.INTER_LINEAR if rng.random() < 0.5 else cv2.INTER_CUBIC
        out = cv2.resize(cv2.resize(out, small, interpolation=cv2.INTER_AREA), (width, height),
                         interpolation=upscale)
    if rng.random() < jpeg_prob:
        quality = int(rng.integers(int(quality_low), int(quality_high) + 1))
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("forgeries.postprocess: OpenCV failed to JPEG-encode the image")
        out = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(out)


def synthesize(kind: str | None, patch: np.ndarray, donor: np.ndarray | None,
               rng: np.random.Generator, *, pristine_share: float = 0.0,
               postprocess_kwargs: dict | None = None, manipulate: Manipulation | None = None,
               mask_kind: str | None = None, mark_source: bool = False,
               donor_history_prob: float = 0.0):
    """One training sample: returns (image, mask, kind_id).

    With probability `pristine_share` the patch comes back untouched with an all-zero mask and
    kind_id PRISTINE_ID (-1). Otherwise a random mask (`masks.random_mask`, of `mask_kind` or
    any kind) drives the forgery `kind` (one of FORGERY_TYPES, or None for a uniformly random
    one) and kind_id is its index in FORGERY_TYPES. `donor` is needed for splicing only; with
    probability `donor_history_prob` it is processed by a random IMC manipulation first.
    When `postprocess_kwargs` is not None, `postprocess(image, rng, **postprocess_kwargs)` is
    applied to every sample, pristine ones included, so that compression or resampling traces
    alone never tell forged from pristine.
    """
    where = "synthesize"
    patch = _check_image(patch, "patch", where)
    _check_rng(rng, where)
    if not 0.0 <= pristine_share <= 1.0:
        raise ValueError(f"forgeries.synthesize: pristine_share must be in [0, 1], "
                         f"got {pristine_share}")
    if kind is None:
        kind = FORGERY_TYPES[int(rng.integers(len(FORGERY_TYPES)))]
    if kind not in FORGERY_TYPES:
        raise ValueError(f"forgeries.synthesize: unknown forgery kind {kind!r}; expected one "
                         f"of {FORGERY_TYPES} or None")
    if kind == "splicing" and donor is None:
        raise ValueError("forgeries.synthesize: splicing needs a donor patch, got None")
    height, width = patch.shape[:2]

    if rng.random() < pristine_share:
        image, mask, kind_id = patch.copy(), np.zeros((height, width), np.uint8), PRISTINE_ID
    else:
        mask = masks_lib.random_mask(rng, height, width, kind=mask_kind)
        kind_id = FORGERY_TYPES.index(kind)
        donor_manipulate = None
        # No draw at probability 0, so that samples of earlier recipes stay as they were.
        if kind == "splicing" and donor_history_prob > 0 and rng.random() < donor_history_prob:
            donor_manipulate = imc_manipulation
        image, mask = forge(kind, patch, donor, mask, rng, manipulate=manipulate,
                            mark_source=mark_source, donor_manipulate=donor_manipulate)
    if postprocess_kwargs is not None:
        image = postprocess(image, rng, **postprocess_kwargs)
    return image, mask, kind_id


def forge(kind: str, patch: np.ndarray, donor: np.ndarray | None, mask: np.ndarray,
          rng: np.random.Generator, *, manipulate: Manipulation | None = None,
          mark_source: bool = False, subpixel_prob: float = COPY_MOVE_SUBPIXEL_PROB,
          donor_manipulate: Manipulation | None = None):
    """The forgery `kind` (of FORGERY_TYPES) of `patch` over a given `mask`, each generator
    with its defaults: (image, mask). `donor` and `donor_manipulate` are for splicing,
    `manipulate` for enhancement, `mark_source` and `subpixel_prob` for copy-move."""
    if kind == "splicing":
        return splicing(patch, donor, mask, rng, donor_manipulate=donor_manipulate)
    if kind == "copy_move":
        return copy_move(patch, mask, rng, mark_source=mark_source, subpixel_prob=subpixel_prob)
    if kind == "removal":
        return removal(patch, mask, rng)
    if kind == "enhancement":
        return enhancement(patch, mask, rng, manipulate)
    raise ValueError(f"forgeries.forge: unknown forgery kind {kind!r}; expected one of {FORGERY_TYPES}")
