"""Random structured masks for synthesising forgeries (the paper's "random structured mask M").

Three families, each deterministic given the `numpy.random.Generator` passed in:

- "strokes": free-form brush strokes (random walks drawn with a thick round brush);
- "blobs": organic blobs, the top-k pixels of a smooth random field (sum of Gaussian bumps
  plus low-frequency noise), which gives one or several irregular regions;
- "polygons": one to three filled star-shaped polygons of random aspect and orientation.

The target area is drawn log-uniformly between `area_range` (default 0.5 % to 60 % of the
image), so tiny and large masks both occur; shapes are placed anywhere, so some touch the
image border and some split into several connected regions. A mask is never empty (a small
disk is added when a shape fell almost entirely outside the image) and never covers the whole
image. Only numpy and OpenCV are used, so this runs in data-loader worker processes.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

MASK_KINDS = ("strokes", "blobs", "polygons")

DEFAULT_AREA_RANGE = (0.005, 0.6)
# A mask with fewer pixels than this is topped up with a small disk, so that every forgery
# changes at least a few pixels.
MIN_MASK_PIXELS = 16
MIN_MASK_SIDE = 16


def random_mask(rng: np.random.Generator, height: int = 256, width: int = 256,
                kind: str | None = None, *,
                area_range: tuple[float, float] = DEFAULT_AREA_RANGE) -> np.ndarray:
    """Returns a random uint8 `height` x `width` mask with values in {0, 1}.

    `kind` is one of MASK_KINDS, or None to pick one uniformly at random. `area_range` bounds
    the (log-uniformly drawn) target fraction of the image the mask covers; the realised
    coverage follows it closely for blobs and polygons, less so for strokes (which overshoot
    by up to one brush segment) and for shapes partly outside the image.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"masks.random_mask: rng must be a numpy.random.Generator, "
                         f"got {type(rng).__name__}")
    height, width = int(height), int(width)
    if height < MIN_MASK_SIDE or width < MIN_MASK_SIDE:
        raise ValueError(f"masks.random_mask: mask size {height}x{width} is below the "
                         f"minimum {MIN_MASK_SIDE}x{MIN_MASK_SIDE}")
    low, high = (float(a) for a in area_range)
    if not 0.0 < low <= high < 1.0:
        raise ValueError(f"masks.random_mask: area_range must satisfy 0 < low <= high < 1, "
                         f"got {area_range!r}")
    if kind is None:
        kind = MASK_KINDS[int(rng.integers(len(MASK_KINDS)))]
    if kind not in _GENERATORS:
        raise ValueError(f"masks.random_mask: unknown mask kind {kind!r}; "
                         f"expected one of {MASK_KINDS}")
    target_fraction = math.exp(rng.uniform(math.log(low), math.log(high)))
    mask = _GENERATORS[kind](rng, height, width, target_fraction)
    return _ensure_partial(mask, rng)


def _strokes(rng, height, width, target_fraction):
    """Random-walk brush strokes, added segment by segment until the target area is reached."""
    mask = np.zeros((height, width), np.uint8)
    target_pixels = target_fraction * height * width
    side = min(height, width)
    # Thickness scales with the target area so that tiny masks are thin scribbles and large
    # ones are broad swathes, rather than a single pen width covering everything by length.
    thickness = int(np.clip(rng.uniform(0.08, 0.3) * math.sqrt(target_pixels),
                            2, max(2, 0.15 * side)))
    # Half of the masks let strokes run off the image edge, the other half keep them inside.
    margin = 0.05 * side if rng.random() < 0.5 else -float(thickness)
    low = np.array([-margin, -margin])
    high = np.array([width - 1 + margin, height - 1 + margin])
    for _ in range(24):  # strokes
        point = rng.uniform(low, high)
        heading = rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(3, 11))):  # segments of this stroke
            heading += rng.uniform(-1.2, 1.2)
            length = rng.uniform(0.05, 0.25) * side
            new_point = point + length * np.array([math.cos(heading), math.sin(heading)])
            if np.any(new_point < low) or np.any(new_point > high):
                # Bounce back in, so strokes do not wander off and draw nothing.
                heading += math.pi
                new_point = np.clip(new_point, low, high)
            start = tuple(int(round(v)) for v in point)
            end = tuple(int(round(v)) for v in new_point)
            cv2.line(mask, start, end, 1, thickness, cv2.LINE_8)
            cv2.circle(mask, end, thickness // 2, 1, -1)
            point = new_point
            if cv2.countNonZero(mask) >= target_pixels:
                return mask
    return mask


def _blobs(rng, height, width, target_fraction):
    """The top `target_fraction` of a smooth random field: irregular, possibly several blobs."""
    # The field is built at quarter resolution and upsampled: smooth anyway, and 16x cheaper.
    small_h, small_w = max(8, height // 4), max(8, width // 4)
    ys, xs = np.mgrid[0:small_h, 0:small_w].astype(np.float32)
    field = np.zeros((small_h, small_w), np.float32)
    side = min(small_h, small_w)
    for _ in range(int(rng.integers(1, 7))):
        cy, cx = rng.uniform(0, small_h), rng.uniform(0, small_w)
        sigma_y = rng.uniform(0.05, 0.35) * side
        sigma_x = sigma_y * math.exp(rng.uniform(-0.6, 0.6))
        amplitude = rng.uniform(0.5, 1.0)
        field += amplitude * np.exp(-0.5 * (((ys - cy) / sigma_y) ** 2
                                             + ((xs - cx) / sigma_x) ** 2))
    # Low-frequency noise roughens the outlines so that blobs are not plain ellipses.
    cells = int(rng.integers(3, 9))
    noise = rng.random((cells, cells)).astype(np.float32)
    field += rng.uniform(0.1, 0.5) * cv2.resize(noise, (small_w, small_h),
                                                 interpolation=cv2.INTER_CUBIC)
    field = cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR).ravel()
    count = max(1, int(round(target_fraction * field.size)))
    threshold = np.partition(field, field.size - count)[field.size - count]
    return (field >= threshold).reshape(height, width).astype(np.uint8)


def _polygons(rng, height, width, target_fraction):
    """One to three filled star-shaped polygons sharing the target area."""
    mask = np.zeros((height, width), np.uint8)
    num_polygons = int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15]))
    area_each = target_fraction * height * width / num_polygons
    for _ in range(num_polygons):
        num_vertices = int(rng.integers(3, 13))
        angles = np.sort(rng.uniform(0, 2 * math.pi, num_vertices))
        radii = rng.uniform(0.4, 1.0, num_vertices)
        aspect = math.exp(rng.uniform(-0.7, 0.7))
        points = np.stack([radii * np.cos(angles) * aspect, radii * np.sin(angles) / aspect], 1)
        tilt = rng.uniform(0, 2 * math.pi)
        rotation = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])
        points = points @ rotation.T
        x, y = points[:, 0], points[:, 1]
        unit_area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
        scale = math.sqrt(area_each / max(unit_area, 1e-3))
        points = scale * points
        center = rng.uniform([0, 0], [width - 1, height - 1])
        if rng.random() < 0.6:
            # Pull the polygon inside the image when it fits, so large masks keep their area
            # and not every polygon is cut by the border.
            lowest, highest = points.min(0), points.max(0)
            limit = np.array([width - 1, height - 1])
            inside_low, inside_high = -lowest, limit - highest
            center = np.where(inside_low <= inside_high,
                              np.clip(center, inside_low, inside_high), center)
        vertices = np.round(center + points).astype(np.int32)
        cv2.fillPoly(mask, [vertices], 1)
    return mask


def _ensure_partial(mask, rng):
    """Makes sure the mask is neither (nearly) empty nor the whole image."""
    height, width = mask.shape
    if cv2.countNonZero(mask) < MIN_MASK_PIXELS:
        radius = 3
        center = (int(rng.integers(radius, width - radius)),
                  int(rng.integers(radius, height - radius)))
        cv2.circle(mask, center, radius, 1, -1)
    if cv2.countNonZero(mask) == mask.size:
        side = max(1, min(height, width) // 4)
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        mask[top:top + side, left:left + side] = 0
    return mask


_GENERATORS = {"strokes": _strokes, "blobs": _blobs, "polygons": _polygons}
