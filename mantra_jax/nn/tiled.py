"""ManTra-Net inference on images of any size: the whole-image pass and its tiled equivalent.

The tiled pass gives the whole-image probability map (to float32 rounding) with device memory
bounded by the tile size, in two passes over tiles:

1. Featex and the adaptation layer (inference-mode batch norm, so per pixel) on each tile plus a
   halo of `featex.receptive_radius(cfg)` pixels. The image-wide per-channel mean and population
   std of the adapted features are accumulated on the host in float64 (Chan's parallel update of
   per-tile moments).
2. Window means, Z-scores against those image-wide moments, ConvLSTM and the 7x7 prediction on
   each tile plus a halo of `ladn.receptive_radius(cfg)` pixels.

Why the results are exact rather than approximate: every layer pads at the image border
(symmetrically in Featex, with zeros in the ConvLSTM and the prediction, by not counting outside
pixels in the window means) and *at every layer*, so padding the input once is not equivalent.
A tile's crop is therefore cut from the image without any padding of its own, and wherever a crop
edge is a true image border the network pads it exactly as the whole-image pass does. Only at
crop edges inside the image do the convolutions see wrong (padded) neighbours, and that error
travels inwards by at most the receptive radius, which the halo absorbs.

All crops of one pass have a single shape, min(H, tile + 2 halo) x min(W, tile + 2 halo): crops
next to a border are shifted inwards instead of being cut short (see `axis_segments`). One image
size therefore compiles each jitted function once, whatever the number of tiles.

Between the passes the adapted features (adapt_dim float32 values per pixel: 256 B/pixel for
the released model, 3 GiB for 12 megapixels) are kept on the host when they fit in
`feature_budget_bytes`; above it, pass 2 recomputes Featex on each of its crops (plus the Featex
halo) instead, which keeps memory bounded by the tile size at about twice the Featex cost.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mantra_jax.nn import featex, ladn, model
from mantra_jax.nn.config import ModelConfig

DEFAULT_TILE = 512
# Host memory allowed for the adapted features kept between the passes (4 GiB: a 16-megapixel
# image with the released adapt_dim of 64); larger images recompute Featex in pass 2.
DEFAULT_FEATURE_BUDGET_BYTES = 4 << 30


@dataclasses.dataclass(frozen=True)
class Segment:
    """One tile along one axis: the interior [start, stop) it writes, and the crop
    [crop_start, crop_stop) it is computed from."""

    start: int
    stop: int
    crop_start: int
    crop_stop: int


def crop_range(start: int, stop: int, span: int, halo: int, length: int) -> tuple[int, int]:
    """The crop for an interior [start, stop) of at most `span` pixels on an axis of `length`.

    The crop has the fixed length min(length, span + 2 halo) and lies inside the image. Its edges
    are either true image borders or at least `halo` pixels from the interior: a crop that would
    stick out of the image is shifted inwards, which only widens the margin on the other side.
    """
    if not 0 <= start < stop <= length or stop - start > span:
        raise ValueError(f"bad interior [{start}, {stop}) for span {span} on an axis of {length}")
    size = min(length, span + 2 * halo)
    lo = min(max(start - halo, 0), length - size)
    return lo, lo + size


def axis_segments(length: int, tile: int, halo: int) -> list[Segment]:
    """Covers an axis of `length` pixels by tiles of `tile` pixels (the last one shorter).

    An axis no longer than one crop (tile + 2 halo) is a single tile: splitting it would compute
    the same crop several times.
    """
    if tile < 1:
        raise ValueError(f"the tile size must be a positive number of pixels, got {tile}")
    if length <= tile + 2 * halo:
        return [Segment(0, length, 0, length)]
    segments = []
    for start in range(0, length, tile):
        stop = min(start + tile, length)
        segments.append(Segment(start, stop, *crop_range(start, stop, tile, halo, length)))
    return segments


def halos(cfg: ModelConfig) -> tuple[int, int]:
    """(Featex halo, LADN halo) in pixels: the receptive radii of the two tiled passes."""
    return featex.receptive_radius(cfg), ladn.receptive_radius(cfg)


def _check_cfg(cfg: ModelConfig):
    if cfg.head != "ladn":
        raise ValueError(
            f"inference needs a ManTra-Net model (head 'ladn'); this one has the {cfg.head!r} head "
            "(an IMC classifier gives class maps, not forgery probabilities)"
        )


def _check_rgb(rgb_HxWx3):
    if rgb_HxWx3.ndim != 3 or rgb_HxWx3.shape[-1] != 3 or rgb_HxWx3.dtype != np.uint8:
        raise ValueError(
            f"expected a uint8 H x W x 3 RGB image, got {rgb_HxWx3.dtype} of shape {tuple(rgb_HxWx3.shape)}"
        )


# --------------------------------------------------------------------------------------------
# The whole-image pass
# --------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def _whole_image(variables, rgb_HxWx3, cfg, dtype):
    x = model.preprocess(rgb_HxWx3)[None]
    return jax.nn.sigmoid(model.apply(variables, x, cfg, dtype=dtype)["logits"][0])


def whole_image_probabilities(variables, rgb_HxWx3, cfg: ModelConfig, *, dtype=jnp.float32) -> np.ndarray:
    """Forgery probabilities (float32 H x W) of a uint8 RGB image in one pass (memory grows with
    the image: about 5 KB per pixel for the released model on CPU)."""
    _check_cfg(cfg)
    _check_rgb(np.asarray(rgb_HxWx3))
    return np.asarray(_whole_image(variables, np.asarray(rgb_HxWx3), cfg, jnp.dtype(dtype)))


# --------------------------------------------------------------------------------------------
# The tiled pass
# --------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def _adapted_features(variables, rgb_crop_HxWx3, cfg, dtype):
    """Featex and the adaptation layer on a crop: the same ops as `model.apply`."""
    params = variables["params"]
    x = model.preprocess(rgb_crop_HxWx3)[None].astype(dtype)
    feat = featex.apply(params["Featex"], x, cfg)
    y, _ = ladn.adapt(params, variables["batch_stats"], feat, cfg, train=False)
    return y[0]


@functools.partial(jax.jit, static_argnames=("cfg", "size"))
def _local_probabilities(variables, y_HxWxC, offset, mean_C, std_C, cfg, size):
    """The local part of the LADN on the `size` window of `y` at `offset`, scored against the
    image-wide moments; returns probabilities on that window."""
    y = jax.lax.dynamic_slice(y_HxWxC, (offset[0], offset[1], 0), size + (y_HxWxC.shape[-1],))
    z = ladn.anomaly_features(variables["params"], y[None], mean_C[None, None, None], std_C[None, None, None], cfg)
    return jax.nn.sigmoid(ladn.decide(variables["params"], z).astype(jnp.float32))[0]


class _MomentAccumulator:
    """Per-channel mean and population variance over many blocks, in float64 (Chan et al.'s
    pairwise update: each block is centred on its own mean, so no catastrophic cancellation)."""

    def __init__(self, channels: int):
        self.count = 0
        self.mean = np.zeros(channels, np.float64)
        self.m2 = np.zeros(channels, np.float64)

    def add(self, block_NxC: np.ndarray, chunk: int = 1 << 15):
        # In chunks, so that the float64 copies stay small next to the tile itself.
        for start in range(0, block_NxC.shape[0], chunk):
            self._add(block_NxC[start : start + chunk])

    def _add(self, block_NxC: np.ndarray):
        block = block_NxC.astype(np.float64)
        n = block.shape[0]
        mean = block.mean(axis=0)
        m2 = np.square(block - mean).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + np.square(delta) * (self.count * n / total)
        self.count = total

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        return self.mean.astype(np.float32), np.sqrt(self.m2 / self.count).astype(np.float32)


def tiled_probabilities(
    variables,
    rgb_HxWx3,
    cfg: ModelConfig,
    *,
    tile: int = DEFAULT_TILE,
    dtype=jnp.float32,
    feature_budget_bytes: int = DEFAULT_FEATURE_BUDGET_BYTES,
    halo_override: Optional[tuple[int, int]] = None,
    on_tile: Optional[Callable[[int, int], None]] = None,
) -> np.ndarray:
    """Forgery probabilities (float32 H x W) of a uint8 RGB image, computed tile by tile.

    Equal to `whole_image_probabilities` up to float32 rounding (see the module docstring).
    `tile` is the interior size in pixels; `feature_budget_bytes` decides whether the adapted
    features are kept on the host between the passes or recomputed. `halo_override` replaces the
    receptive radii (Featex, LADN) and exists to show that smaller halos break the equality.
    `on_tile(done, total)` is called after each tile of either pass.
    """
    _check_cfg(cfg)
    rgb_HxWx3 = np.asarray(rgb_HxWx3)
    _check_rgb(rgb_HxWx3)
    dtype = jnp.dtype(dtype)
    height, width = rgb_HxWx3.shape[:2]
    halo_featex, halo_ladn = halo_override if halo_override is not None else halos(cfg)
    channels = cfg.adapt_dim

    pass1 = [(r, c) for r in axis_segments(height, tile, halo_featex) for c in axis_segments(width, tile, halo_featex)]
    pass2 = [(r, c) for r in axis_segments(height, tile, halo_ladn) for c in axis_segments(width, tile, halo_ladn)]
    total, done = len(pass1) + len(pass2), 0
    keep_features = height * width * channels * 4 <= feature_budget_bytes

    # Pass 1: adapted features tile by tile, and their image-wide moments.
    stored = np.empty((height, width, channels), np.float32) if keep_features else None
    moments = _MomentAccumulator(channels)
    for r, c in pass1:
        crop = rgb_HxWx3[r.crop_start : r.crop_stop, c.crop_start : c.crop_stop]
        y = np.asarray(_adapted_features(variables, crop, cfg, dtype))
        interior = y[r.start - r.crop_start : r.stop - r.crop_start, c.start - c.crop_start : c.stop - c.crop_start]
        moments.add(interior.reshape(-1, channels))
        if stored is not None:
            stored[r.start : r.stop, c.start : c.stop] = interior
        done += 1
        if on_tile is not None:
            on_tile(done, total)
    mean, std = moments.moments()

    # Pass 2: the local part of the LADN on each crop of adapted features.
    out = np.empty((height, width), np.float32)
    for r, c in pass2:
        size = (r.crop_stop - r.crop_start, c.crop_stop - c.crop_start)
        if stored is not None:
            y = stored[r.crop_start : r.crop_stop, c.crop_start : c.crop_stop]
            offset = (0, 0)
        else:
            # The crop's own features are exact only with a Featex halo around the whole crop.
            fr0, fr1 = crop_range(r.crop_start, r.crop_stop, size[0], halo_featex, height)
            fc0, fc1 = crop_range(c.crop_start, c.crop_stop, size[1], halo_featex, width)
            y = _adapted_features(variables, rgb_HxWx3[fr0:fr1, fc0:fc1], cfg, dtype)
            offset = (r.crop_start - fr0, c.crop_start - fc0)
        prob = np.asarray(_local_probabilities(variables, y, np.asarray(offset, np.int32), mean, std, cfg, size))
        out[r.start : r.stop, c.start : c.stop] = prob[
            r.start - r.crop_start : r.stop - r.crop_start, c.start - c.crop_start : c.stop - c.crop_start
        ]
        done += 1
        if on_tile is not None:
            on_tile(done, total)
    return out
