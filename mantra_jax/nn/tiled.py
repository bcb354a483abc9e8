"""ManTra-Net inference on images of any size: the whole-image pass and its tiled equivalent.

The tiled pass gives the whole-image probability map (to float32 rounding) with device memory
bounded by the tile size, in two passes over tiles:

1. Featex and the adaptation layer (inference-mode batch norm, so per pixel) on each tile plus a
   halo of `featex.receptive_radius(cfg)` pixels. Each tile's interior reduces on the device to a
   per-channel mean and sum of squared deviations, and the host merges those into the image-wide
   mean and population std in float64 (Chan's parallel update).
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
the released model, 3 GiB for 12 megapixels) are kept on the device, written in place tile by
tile, when they fit in `feature_budget_bytes`; above it, pass 2 recomputes Featex on each of its
crops (plus the Featex halo) instead, which keeps memory bounded by the tile size at about twice
the Featex cost. The image is uploaded once and cropped on the device, so the only transfers per
tile are a few offsets up and a 2 x adapt_dim vector (pass 1) or the crop's probabilities
(pass 2) down: an accelerator is not held up by host copies or host arithmetic.

The fixed-shape tiled pass (`canvas_probabilities`, what inference uses) computes the same two
passes on canvases of one size per tile size: each crop fills the top-left part of the canvas (its
`extent`), Featex mirrors the crop's bottom and right edges into the canvas before every layer
(layers.reflect_beyond) and the LADN's window means and ConvLSTM count and see only the crop,
so that a crop edge at an image border is that border exactly as in the whole-image pass. No crop
needs to be shifted or shortened to a size of its own, so every image, of any size, runs the
same compiled programs; the adapted features wait between the passes in host memory.

Whether an image may take the whole-image pass is decided by `whole_image_program`: it compiles
that program for the image's size and compares what XLA's memory analysis says it needs
(temporaries, arguments and output) with the memory the device has free (an accelerator's
allocator limit less what is in use; on CPU the host's available memory), so that no image
size or setting makes the whole-image pass exhaust memory and abort the process.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mantra_jax.nn import featex, ladn, layers, model
from mantra_jax.nn.config import ModelConfig

DEFAULT_TILE = 512
# Device memory allowed for the adapted features kept between the passes (4 GiB: a 16-megapixel
# image with the released adapt_dim of 64); larger images recompute Featex in pass 2.
DEFAULT_FEATURE_BUDGET_BYTES = 4 << 30
# The share of the free memory the whole-image program may need according to XLA's analysis. On
# CPU the process grew by 1.7 to 2 times the analysis (1/8-width model: 605 MB for 303 MB at one
# megapixel, 1033 MB for 607 MB at two; the runtime's own buffers and fragmentation), hence half.
WHOLE_IMAGE_MEMORY_SHARE = 0.5


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
def whole_image_map(variables, rgb_HxWx3, cfg, dtype):
    """The jitted whole-image program: uint8 H x W x 3 -> float32 probabilities, without the input
    checks of `whole_image_probabilities` (what the benchmarks lower and analyse)."""
    x = model.preprocess(rgb_HxWx3)[None]
    return jax.nn.sigmoid(model.apply(variables, x, cfg, dtype=dtype)["logits"][0])


def available_memory_bytes(device=None) -> Optional[int]:
    """Free memory of `device` (default: the first one) in bytes, or None when unknown: an
    accelerator's allocator limit less its bytes in use; on CPU the host's available memory."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    if device.platform != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def program_bytes(compiled) -> Optional[int]:
    """The memory a compiled program needs by XLA's analysis (temporaries, arguments and
    outputs, less what outputs alias), or None when the backend gives no analysis."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               - analysis.alias_size_in_bytes)


def whole_image_program(variables, height: int, width: int, cfg: ModelConfig, *, dtype=jnp.float32,
                        budget_bytes: Optional[int] = None):
    """(the compiled whole-image program for a `height` x `width` image, or None when it does not
    fit; the bytes it needs, or None when unknown). It fits when XLA's memory analysis asks for at
    most WHOLE_IMAGE_MEMORY_SHARE of `budget_bytes` (default: `available_memory_bytes()`); an
    unknown need or budget counts as fitting. Call the program as `program(variables, rgb)`."""
    _check_cfg(cfg)
    spec = jax.ShapeDtypeStruct((int(height), int(width), 3), jnp.uint8)
    compiled = whole_image_map.lower(variables, spec, cfg, jnp.dtype(dtype)).compile()
    needed = program_bytes(compiled)
    budget = available_memory_bytes() if budget_bytes is None else budget_bytes
    if needed is not None and budget is not None and needed > WHOLE_IMAGE_MEMORY_SHARE * budget:
        return None, needed
    return compiled, needed


def whole_image_probabilities(variables, rgb_HxWx3, cfg: ModelConfig, *, dtype=jnp.float32) -> np.ndarray:
    """Forgery probabilities (float32 H x W) of a uint8 RGB image in one pass (memory grows with
    the image: about 5 KB per pixel for the released model on CPU)."""
    _check_cfg(cfg)
    _check_rgb(np.asarray(rgb_HxWx3))
    return np.asarray(whole_image_map(variables, np.asarray(rgb_HxWx3), cfg, jnp.dtype(dtype)))


# --------------------------------------------------------------------------------------------
# The tiled pass
# --------------------------------------------------------------------------------------------
class FeatureHead(NamedTuple):
    """A per-pixel head on the Featex features, run by `tiled_probabilities` in pass 1 beside the
    adaptation layer, so that Featex runs once for both outputs (the IMC class maps of
    mantra_jax/infer/trace.py). Pass 1's halo grows by `radius`, so its map is exact too."""

    fn: Callable  # (variables, feat_1xhxwxC[, extent]) -> float32 (h, w, channels); hashable: a jit static argument
    variables: Any
    channels: int
    radius: int  # its receptive radius beyond Featex's


def crop_features(variables, rgb_HxWx3, start, size, cfg, dtype, with_featex=False):
    """Featex and the adaptation layer (the same ops as `model.apply`) on the `size` crop of the
    image at `start` (traced, so every crop of one shape shares one compilation); with
    `with_featex`, (adapted features, Featex features)."""
    crop = jax.lax.dynamic_slice(rgb_HxWx3, (start[0], start[1], 0), size + (3,))
    params = variables["params"]
    feat = featex.apply(params["Featex"], model.preprocess(crop)[None].astype(dtype), cfg)
    y, _ = ladn.adapt(params, variables["batch_stats"], feat, cfg, train=False)
    return (y[0], feat) if with_featex else y[0]


def _interior_mask(size, interior):
    """(h, w, 1) booleans: True on rows [interior[0], interior[1]) x cols [interior[2], interior[3])."""
    rows, cols = jnp.arange(size[0]), jnp.arange(size[1])
    in_rows = (rows >= interior[0]) & (rows < interior[1])
    in_cols = (cols >= interior[2]) & (cols < interior[3])
    return (in_rows[:, None] & in_cols[None, :])[..., None]


@functools.partial(jax.jit, static_argnames=("cfg", "dtype", "size", "head_fn"),
                   donate_argnames=("stored_HxWxC", "head_store_HxWxK"))
def pass1_tile(variables, rgb_HxWx3, stored_HxWxC, start, interior, head_variables=None, head_store_HxWxK=None, *,
                cfg, dtype, size, head_fn=None):
    """Adapted features of one crop. Returns (the image's feature store with the crop's interior
    written in place, or None; the interior's per-channel mean; its sum of squared deviations from
    that mean), and with a `head_fn` (FeatureHead.fn) also its store with the crop's interior
    written in place. Interior in crop coordinates."""
    y, feat = crop_features(variables, rgb_HxWx3, start, size, cfg, dtype, with_featex=True)
    inside = _interior_mask(size, interior)
    count = ((interior[1] - interior[0]) * (interior[3] - interior[2])).astype(jnp.float32)
    mean = jnp.sum(jnp.where(inside, y, 0.0), axis=(0, 1)) / count
    m2 = jnp.sum(jnp.where(inside, jnp.square(y - mean), 0.0), axis=(0, 1))
    if stored_HxWxC is not None:
        at = (start[0], start[1], 0)
        window = jax.lax.dynamic_slice(stored_HxWxC, at, y.shape)
        stored_HxWxC = jax.lax.dynamic_update_slice(stored_HxWxC, jnp.where(inside, y, window), at)
    if head_fn is None:
        return stored_HxWxC, mean, m2
    head = head_fn(head_variables, feat)
    at = (start[0], start[1], 0)
    window = jax.lax.dynamic_slice(head_store_HxWxK, at, head.shape)
    return stored_HxWxC, mean, m2, jax.lax.dynamic_update_slice(head_store_HxWxK, jnp.where(inside, head, window), at)


@functools.partial(jax.jit, static_argnames=("cfg", "dtype", "size", "feature_size"))
def pass2_tile(variables, rgb_HxWx3, stored_HxWxC, start, feature_start, mean_C, std_C, *, cfg, dtype, size,
                feature_size):
    """The local part of the LADN on the `size` crop at `start`, scored against the image-wide
    moments: probabilities on that crop. Its adapted features come from the store, or, without
    one, are recomputed from the `feature_size` crop at `feature_start` (the crop plus its
    Featex halo)."""
    if stored_HxWxC is None:
        features = crop_features(variables, rgb_HxWx3, feature_start, feature_size, cfg, dtype)
        at = (start[0] - feature_start[0], start[1] - feature_start[1], 0)
    else:
        features, at = stored_HxWxC, (start[0], start[1], 0)
    y = jax.lax.dynamic_slice(features, at, size + (features.shape[-1],))
    z = ladn.anomaly_features(variables["params"], y[None], mean_C[None, None, None], std_C[None, None, None], cfg)
    return jax.nn.sigmoid(ladn.decide(variables["params"], z, dtype, gate=cfg.lstm_gate))[0]


class _MomentAccumulator:
    """Per-channel mean and population variance of an image from per-tile (count, mean, sum of
    squared deviations), merged in float64 by Chan et al.'s pairwise update: each tile is centred
    on its own mean, so nothing cancels catastrophically."""

    def __init__(self, channels: int):
        self.count = 0
        self.mean = np.zeros(channels, np.float64)
        self.m2 = np.zeros(channels, np.float64)

    def merge(self, count: int, mean, m2):
        mean, m2 = np.asarray(mean, np.float64), np.asarray(m2, np.float64)
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + np.square(delta) * (self.count * count / total)
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
    feature_head: Optional[FeatureHead] = None,
):
    """Forgery probabilities (float32 H x W) of a uint8 RGB image, computed tile by tile; with a
    `feature_head`, (probabilities, its float32 H x W x channels map) from the same Featex run.

    Equal to `whole_image_probabilities` up to float32 rounding (see the module docstring).
    `tile` is the interior size in pixels; `feature_budget_bytes` decides whether the adapted
    features are kept on the device between the passes or recomputed. `halo_override` replaces
    the receptive radii (Featex, LADN) and exists to show that smaller halos break the equality.
    `on_tile(done, total)` is called after each tile of either pass.
    """
    _check_cfg(cfg)
    rgb_HxWx3 = np.asarray(rgb_HxWx3)
    _check_rgb(rgb_HxWx3)
    dtype = jnp.dtype(dtype)
    height, width = rgb_HxWx3.shape[:2]
    halo_featex, halo_ladn = halo_override if halo_override is not None else halos(cfg)
    channels = cfg.adapt_dim
    head_fn, head_variables, head_store = None, None, None
    if feature_head is not None:
        halo_featex += feature_head.radius  # wider pass-1 crops (and pass-2 recomputation crops): still exact
        head_fn, head_variables = feature_head.fn, feature_head.variables
        head_store = jnp.zeros((height, width, feature_head.channels), jnp.float32)

    pass1 = [(r, c) for r in axis_segments(height, tile, halo_featex) for c in axis_segments(width, tile, halo_featex)]
    pass2 = [(r, c) for r in axis_segments(height, tile, halo_ladn) for c in axis_segments(width, tile, halo_ladn)]
    total, done = len(pass1) + len(pass2), 0
    rgb = jax.device_put(rgb_HxWx3)  # once: every crop is cut on the device
    keep_features = height * width * channels * 4 <= feature_budget_bytes
    stored = jnp.zeros((height, width, channels), jnp.float32) if keep_features else None

    def corner(r, c):
        return np.asarray((r.crop_start, c.crop_start), np.int32)

    # Pass 1: adapted features tile by tile (kept on the device), and their image-wide moments.
    moments = _MomentAccumulator(channels)
    for r, c in pass1:
        size = (r.crop_stop - r.crop_start, c.crop_stop - c.crop_start)
        interior = np.asarray(
            (r.start - r.crop_start, r.stop - r.crop_start, c.start - c.crop_start, c.stop - c.crop_start), np.int32
        )
        stored, mean, m2, *head = pass1_tile(variables, rgb, stored, corner(r, c), interior, head_variables, head_store,
                                              cfg=cfg, dtype=dtype, size=size, head_fn=head_fn)
        head_store = head[0] if head else None
        moments.merge((r.stop - r.start) * (c.stop - c.start), np.asarray(mean), np.asarray(m2))
        done += 1
        if on_tile is not None:
            on_tile(done, total)
    mean, std = moments.moments()

    # Pass 2: the local part of the LADN on each crop of adapted features.
    out = np.empty((height, width), np.float32)
    for r, c in pass2:
        size = (r.crop_stop - r.crop_start, c.crop_stop - c.crop_start)
        # Without a store, the crop's own features are exact only with a Featex halo around it.
        fr0, fr1 = crop_range(r.crop_start, r.crop_stop, size[0], halo_featex, height)
        fc0, fc1 = crop_range(c.crop_start, c.crop_stop, size[1], halo_featex, width)
        prob = np.asarray(pass2_tile(
            variables, rgb, stored, corner(r, c), np.asarray((fr0, fc0), np.int32), mean, std,
            cfg=cfg, dtype=dtype, size=size, feature_size=(fr1 - fr0, fc1 - fc0),
        ))
        out[r.start : r.stop, c.start : c.stop] = prob[
            r.start - r.crop_start : r.stop - r.crop_start, c.start - c.crop_start : c.stop - c.crop_start
        ]
        done += 1
        if on_tile is not None:
            on_tile(done, total)
    return out if feature_head is None else (out, np.asarray(head_store))


# --------------------------------------------------------------------------------------------
# The fixed-shape tiled pass: one compilation per model, whatever the image sizes
# --------------------------------------------------------------------------------------------
# An image with a side below this takes the whole-image pass at its own size (a compilation of
# its own): the canvas passes need a few pixels of image on each axis to mirror at its borders.
MIN_CANVAS_SIDE = 16


def canvas_segments(length: int, tile: int, halo: int) -> list[Segment]:
    """Covers an axis of `length` pixels by crops of at most tile + 2 halo pixels, each placed at
    the top (left) of a canvas of that size.

    A crop starts at an image border or `halo` pixels before its interior, and ends at an image
    border or `halo` pixels after it; a crop edge at an image border is that border for the
    network (the canvas mirrors it, layers.reflect_beyond), so no crop is shifted or shortened
    to fit and every crop of every image shares the canvas. The first crop's interior is
    tile + halo pixels (no halo before it), the others' tile, the last one's what is left.
    """
    if tile < 1:
        raise ValueError(f"the tile size must be a positive number of pixels, got {tile}")
    span = tile + 2 * halo
    segments, start = [], 0
    while start < length:
        crop_start = max(start - halo, 0)
        stop = length if crop_start + span >= length else crop_start + span - halo
        segments.append(Segment(start, stop, crop_start, min(stop + halo, length)))
        start = stop
    return segments


# The tiles `choose_tile` picks from, largest first: DEFAULT_TILE and smaller ones for small
# images (a 256 x 256 patch on DEFAULT_TILE's canvas would cost 4.5 times its arithmetic).
TILE_CHOICES = (DEFAULT_TILE, 256, 128)


def canvas_pixels(height: int, width: int, cfg: ModelConfig, tile: int, head_radius: int = 0) -> int:
    """The canvas pixels both passes of `canvas_probabilities` compute for an image: its cost."""
    halo_featex, halo_ladn = halos(cfg)
    total = 0
    for halo, side in zip((halo_featex + head_radius, halo_ladn), canvas_sides(cfg, tile, head_radius)):
        total += len(canvas_segments(height, tile, halo)) * len(canvas_segments(width, tile, halo)) * side * side
    return total


def choose_tile(height: int, width: int, cfg: ModelConfig, head_radius: int = 0) -> int:
    """The tile of TILE_CHOICES for an image: a smaller tile only where it halves the canvas
    pixels of the larger one, so that a folder of similar sizes shares one tile (one pair of
    compiled programs) and a small image is not computed on a canvas many times its size. At
    most len(TILE_CHOICES) tiles, and so compilations, for any number of image sizes."""
    best, best_pixels = TILE_CHOICES[0], canvas_pixels(height, width, cfg, TILE_CHOICES[0], head_radius)
    for tile in TILE_CHOICES[1:]:
        pixels = canvas_pixels(height, width, cfg, tile, head_radius)
        if 2 * pixels <= best_pixels:
            best, best_pixels = tile, pixels
    return best


def canvas_sides(cfg: ModelConfig, tile: int, head_radius: int = 0) -> tuple[int, int]:
    """(pass-1 canvas side, pass-2 canvas side) in pixels for `tile`: a crop with its halos, and
    in pass 1 the rows and columns that Featex mirrors beyond an image's border."""
    halo_featex, halo_ladn = halos(cfg)
    margin = max(cfg.first_kernel // 2, 1)
    return tile + 2 * (halo_featex + head_radius) + margin, tile + 2 * halo_ladn


@functools.partial(jax.jit, static_argnames=("cfg", "dtype", "head_fn"))
def canvas_pass1(variables, rgb_SxSx3, extent, interior, head_variables=None, *, cfg, dtype, head_fn=None):
    """Pass 1 on one canvas: the image crop fills its top-left `extent` (h, w). Returns (adapted
    features S x S x adapt_dim, the per-channel mean of the `interior` (row0, row1, col0, col1) and
    its sum of squared deviations from that mean), and with a `head_fn` (FeatureHead.fn, called
    as fn(variables, features, extent)) its map S x S x channels."""
    params = variables["params"]
    x = model.preprocess(rgb_SxSx3)[None].astype(dtype)
    feat = featex.apply(params["Featex"], x, cfg, extent=extent)
    y = ladn.adapt(params, variables["batch_stats"], feat, cfg, train=False)[0][0]
    inside = _interior_mask(y.shape[:2], interior)
    count = ((interior[1] - interior[0]) * (interior[3] - interior[2])).astype(jnp.float32)
    mean = jnp.sum(jnp.where(inside, y, 0.0), axis=(0, 1)) / count
    m2 = jnp.sum(jnp.where(inside, jnp.square(y - mean), 0.0), axis=(0, 1))
    if head_fn is None:
        return y, mean, m2
    return y, mean, m2, head_fn(head_variables, feat, extent)


@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def canvas_pass2(variables, features_SxSxC, extent, mean_C, std_C, *, cfg, dtype):
    """Pass 2 on one canvas of adapted features (the crop in its top-left `extent`), scored
    against the image-wide moments: probabilities S x S (meaningless outside the extent)."""
    params = variables["params"]
    y = features_SxSxC[None]
    z = ladn.anomaly_features(params, y, mean_C[None, None, None], std_C[None, None, None], cfg, extent=extent)
    inside = layers.extent_mask(y.shape[1:3], extent)
    return jax.nn.sigmoid(ladn.decide(params, z, dtype, inside=inside, gate=cfg.lstm_gate))[0]


def canvas_probabilities(variables, rgb_HxWx3, cfg: ModelConfig, *, tile: Optional[int] = None, dtype=jnp.float32,
                         feature_head: Optional[FeatureHead] = None):
    """`tiled_probabilities` on canvases of one size per pass (`canvas_sides`): every image, of
    any size, runs the same two compiled programs (for a given model, tile, dtype and head), so
    a folder of many sizes costs its pixels, not one compilation per size. The same map as the
    whole-image pass up to float32 rounding: the crops and halos of `tiled_probabilities`, with
    each crop's image borders mirrored inside the canvas (layers.reflect_beyond) and the LADN's
    windows and ConvLSTM confined to the crop (`extent`). The adapted features wait between the
    passes in host memory (adapt_dim float32 values per pixel). Images with a side below
    MIN_CANVAS_SIDE take the whole-image pass instead. `tile`: None chooses one of
    TILE_CHOICES by the image's size (`choose_tile`)."""
    _check_cfg(cfg)
    rgb_HxWx3 = np.asarray(rgb_HxWx3)
    _check_rgb(rgb_HxWx3)
    dtype = jnp.dtype(dtype)
    height, width = rgb_HxWx3.shape[:2]
    if min(height, width) < MIN_CANVAS_SIDE:
        prob = whole_image_probabilities(variables, rgb_HxWx3, cfg, dtype=dtype)
        if feature_head is None:
            return prob
        feat = featex.apply(variables["params"]["Featex"], model.preprocess(rgb_HxWx3)[None].astype(dtype), cfg)
        return prob, np.asarray(feature_head.fn(feature_head.variables, feat, None))
    halo_featex, halo_ladn = halos(cfg)
    head_radius = feature_head.radius if feature_head is not None else 0
    halo_featex += head_radius
    tile = choose_tile(height, width, cfg, head_radius) if tile is None else tile
    side1, side2 = canvas_sides(cfg, tile, head_radius)
    channels = cfg.adapt_dim
    store = np.empty((height, width, channels), np.float32)
    head_store = None if feature_head is None else np.empty((height, width, feature_head.channels), np.float32)
    canvas = np.zeros((side1, side1, 3), np.uint8)

    moments = _MomentAccumulator(channels)
    for r in canvas_segments(height, tile, halo_featex):
        for c in canvas_segments(width, tile, halo_featex):
            h, w = r.crop_stop - r.crop_start, c.crop_stop - c.crop_start
            canvas[:h, :w] = rgb_HxWx3[r.crop_start:r.crop_stop, c.crop_start:c.crop_stop]
            inner = (r.start - r.crop_start, r.stop - r.crop_start, c.start - c.crop_start, c.stop - c.crop_start)
            out = canvas_pass1(variables, canvas, np.asarray((h, w), np.int32), np.asarray(inner, np.int32),
                               None if feature_head is None else feature_head.variables, cfg=cfg, dtype=dtype,
                               head_fn=None if feature_head is None else feature_head.fn)
            rows, cols = slice(inner[0], inner[1]), slice(inner[2], inner[3])
            store[r.start:r.stop, c.start:c.stop] = np.asarray(out[0])[rows, cols]
            if feature_head is not None:
                head_store[r.start:r.stop, c.start:c.stop] = np.asarray(out[3])[rows, cols]
            moments.merge((r.stop - r.start) * (c.stop - c.start), np.asarray(out[1]), np.asarray(out[2]))
    mean, std = moments.moments()

    prob = np.empty((height, width), np.float32)
    features = np.zeros((side2, side2, channels), np.float32)
    for r in canvas_segments(height, tile, halo_ladn):
        for c in canvas_segments(width, tile, halo_ladn):
            h, w = r.crop_stop - r.crop_start, c.crop_stop - c.crop_start
            features[:h, :w] = store[r.crop_start:r.crop_stop, c.crop_start:c.crop_stop]
            out = np.asarray(canvas_pass2(variables, features, np.asarray((h, w), np.int32), mean, std, cfg=cfg,
                                          dtype=dtype))
            prob[r.start:r.stop, c.start:c.stop] = out[r.start - r.crop_start:r.stop - r.crop_start,
                                                       c.start - c.crop_start:c.stop - c.crop_start]
    return prob if feature_head is None else (prob, head_store)
