"""Manipulation tracing: per-pixel manipulation-type maps from an IMC checkpoint (the paper's Fig. 3b).

    tracer = Tracer.from_checkpoint("runs/imc", level=1)
    trace = tracer.trace(rgb_uint8_HxWx3)             # TraceMap: class id and top probability per pixel
    write_trace_png(out / trace_png_name(stem, 1), trace, rgb=rgb_uint8_HxWx3)   # over the photo
    write_legend_png(out, 1)                          # trace_legend_L1.png, once per folder
    row.update(trace_summary(trace))                  # TRACE_SUMMARY_FIELDS, flat: one csv row

What the map is. The IMC network is Featex plus a 3x3 convolution to the classes of the level it
was trained at (`featex.imc_head`). Training scores the spatial mean of that conv's output
(`featex.imc_head_pooled`); the head is linear, so those pooled logits are *exactly* the mean of
the per-pixel logit map, and the map is the model's own unpooled output (`model.apply` with
pooled=False), not an approximation of it. Each pixel's logits are the head applied to the 3x3
neighbourhood of that pixel's features, where training applied it to the patch's mean feature;
its probabilities are the softmax of those logits. The softmax is not linear: the mean of the
per-pixel probabilities is not the image-level prediction, so a map's dominant class need not be
the class the pooled classifier gives the whole image.

Levels. Per-pixel probabilities at the checkpoint's level are mapped to any coarser level 0-5 by
summing each class's probability into its ancestor (`taxonomy.map_prediction(kind="probs")`,
here as a product with `taxonomy.level_matrix`), then the argmax and its probability are kept:
the map's class at level k is the most probable level-k node, not the ancestor of the most
probable fine class. A level finer than the checkpoint's cannot be made.

Tiling. The map at a pixel depends on the input within `featex.receptive_radius(cfg) + 1` pixels
(the head adds one), so tiles cut with that halo by `tiled.canvas_segments` (the mask's tiling
rule) give the whole-image map (the same classes, probabilities to float32 rounding, as for the mask),
in memory bounded by the tile size, on canvases of one size (`tiled.canvas_probabilities`), so
that every image size shares one compilation. With a mask model whose
Featex is the IMC checkpoint's (the half-freeze of Table 7), `MaskAndTrace` runs Featex once for
both outputs, whole-image or tiled (`tiled.FeatureHead`).

Palette. Class i of any level is drawn in colour i of one fixed sequence (`palette`), made
without randomness or hashing: a greedy farthest-point choice over the 16^3 RGB lattice (steps
of 17), skipping low-chroma and dark colours, in an integer "redmean" colour distance, starting from the
uncertainty grey. Its first 27 colours (level 1) are far apart; at levels 4-5 neighbours get
close, which the legend resolves.

Drawing. The map is drawn over the photo (in grey, so that colour means a class): each pixel's
class colour with an opacity that grows with the model's `confidence`, log(p K) / log(K) for its
top probability p among the level's K classes (none at chance, full at certainty), so that a map
shows the model's answer and how sure it is at every level, for a small model as for a large one.
A fixed probability threshold would not: the shipped small IMC model's top level-1 probability
stays near 0.1 (chance: 1/27), and 0.5 left its maps blank. `threshold` (default 0) still leaves
the pixels below it uncoloured; the summary counts what the map shows.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple, Optional

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from mantra_jax import provenance
from mantra_jax.infer import predict
from mantra_jax.data import images
from mantra_jax.imc import taxonomy
from mantra_jax.nn import config as config_lib
from mantra_jax.nn import featex, ladn, model, tiled
from mantra_jax.nn.config import ModelConfig

DEFAULT_LEVEL = 1
DEFAULT_THRESHOLD = 0.0  # every pixel shows its class, shaded by confidence (`confidence`)
UNCERTAIN_RGB = (128, 128, 128)
TRACE_MAX_ALPHA = 0.9  # the opacity of a class colour at full confidence
# The summary lists classes after the dominant one until these cover this share of the pixels.
SUMMARY_COVERAGE = 0.95
SUMMARY_MAX_OTHERS = 5
TRACE_SUMMARY_FIELDS = ("trace_level", "trace_dominant", "trace_dominant_share", "trace_others",
                        "trace_below_threshold")
HEAD_RADIUS = 1  # the 3x3 IMC head
# The most per-pixel class logits one tile may hold (float32: 160 MB per array of them): the IMC
# head's logits and probabilities on DEFAULT_TILE's canvas, at 380 classes, would take 450 MB
# each, and a 1-megapixel mask + trace more than 1.5 GB.
MAX_TILE_LOGITS = 40_000_000


class TraceMap(NamedTuple):
    """One image's trace at `level`: the most probable class per pixel and its probability."""

    class_map: np.ndarray  # int32 H x W, class ids at `level`
    top_prob: np.ndarray  # float32 H x W
    level: int


def trace_png_name(stem: str, level: int) -> str:
    return f"{stem}_trace_L{level}.png"


def legend_name(level: int) -> str:
    return f"trace_legend_L{level}.png"


def checkpoint_level(cfg: ModelConfig) -> int:
    """The hierarchy level an IMC model was trained at; a one-line ValueError for another model."""
    if cfg.head != "imc":
        raise ValueError(f"manipulation maps need an IMC checkpoint (head 'imc'); this one has the {cfg.head!r} head")
    if cfg.num_classes not in taxonomy.LEVEL_SIZES:
        raise ValueError(f"the IMC head has {cfg.num_classes} classes, which is no taxonomy level "
                         f"({'/'.join(map(str, taxonomy.LEVEL_SIZES))} classes at levels 0-5)")
    return taxonomy.LEVEL_SIZES.index(cfg.num_classes)


def head_variables(variables: dict, from_level: int, to_level: int) -> dict:
    """What `trace_from_features` needs: the IMC head's parameters and, below the checkpoint's
    level, the 0/1 matrix that sums each class's probability into its level-`to_level` ancestor."""
    to_level = taxonomy.level_index(to_level)
    if to_level > from_level:
        raise ValueError(f"the IMC checkpoint was trained at level {from_level}: maps at level {to_level} (finer) "
                         "cannot be made from it")
    out = {"imc": variables["params"]["imc"]}
    if to_level != from_level:
        out["to_level"] = jnp.asarray(taxonomy.level_matrix(from_level, to_level))
    return out


def trace_from_features(head_vars: dict, feat_1xHxWxC, extent=None):
    """float32 H x W x 2: [..., 0] the argmax class (exact as a float up to 2^24 classes), [..., 1]
    its probability, of the softmax of the per-pixel IMC logits, mapped to the target level.
    `extent`: the image's part of a canvas (featex.apply)."""
    logits = featex.imc_head(head_vars["imc"], feat_1xHxWxC, extent).astype(jnp.float32)[0]
    probs = jax.nn.softmax(logits, axis=-1)
    if "to_level" in head_vars:  # sums of children (taxonomy.map_prediction), not rounded to bfloat16
        probs = jnp.matmul(probs, head_vars["to_level"], precision=jax.lax.Precision.HIGHEST)
    return jnp.stack([jnp.argmax(probs, axis=-1).astype(jnp.float32), jnp.max(probs, axis=-1)], axis=-1)


def _to_trace(out_HxWx2, level: int) -> TraceMap:
    out = np.asarray(out_HxWx2)
    return TraceMap(out[..., 0].astype(np.int32), out[..., 1].astype(np.float32), level)


# --------------------------------------------------------------------------------------------
# Whole-image and tiled programs
# --------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def whole_image_trace(featex_params, head_vars, rgb_HxWx3, cfg, dtype):
    """uint8 H x W x 3 -> float32 H x W x 2 (`trace_from_features`) in one pass."""
    feat = featex.apply(featex_params, model.preprocess(rgb_HxWx3)[None].astype(dtype), cfg)
    return trace_from_features(head_vars, feat)


@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def whole_image_mask_and_trace(variables, head_vars, rgb_HxWx3, cfg, dtype):
    """(forgery probabilities H x W, trace H x W x 2) of a ManTra-Net model `variables` and an IMC
    head on its Featex features: the ops of `tiled.whole_image_map` with Featex run once."""
    params = variables["params"]
    feat = featex.apply(params["Featex"], model.preprocess(rgb_HxWx3)[None].astype(dtype), cfg)
    logits, _ = ladn.apply(params, variables["batch_stats"], feat, cfg, train=False)
    return jax.nn.sigmoid(logits.astype(jnp.float32)[0]), trace_from_features(head_vars, feat)


@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def _trace_canvas(featex_params, head_vars, rgb_SxSx3, extent, *, cfg, dtype):
    """`whole_image_trace` of the image crop in the top-left `extent` of a canvas (tiled.
    canvas_probabilities): one compilation for every crop of every image size."""
    feat = featex.apply(featex_params, model.preprocess(rgb_SxSx3)[None].astype(dtype), cfg, extent=extent)
    return trace_from_features(head_vars, feat, extent)


def tiled_trace(featex_params, head_vars, rgb_HxWx3, cfg: ModelConfig, *, tile: Optional[int] = None,
                dtype=jnp.float32, halo: Optional[int] = None) -> np.ndarray:
    """`whole_image_trace` tile by tile on canvases of one size (tiled.canvas_segments): every
    crop has the halo featex.receptive_radius + 1 (`halo` overrides it, to show that less breaks
    the equality); one compilation for every image size. `tile` None: `trace_tile`'s. Images
    with a side below tiled.MIN_CANVAS_SIDE take the whole-image pass."""
    rgb = np.asarray(rgb_HxWx3)
    height, width = rgb.shape[:2]
    dtype = jnp.dtype(dtype)
    if min(height, width) < tiled.MIN_CANVAS_SIDE:
        return np.asarray(whole_image_trace(featex_params, head_vars, rgb, cfg, dtype))
    halo = featex.receptive_radius(cfg) + HEAD_RADIUS if halo is None else halo
    tile = trace_tile(height, width, cfg, _classes(head_vars)) if tile is None else tile
    side = tile + 2 * halo + max(cfg.first_kernel // 2, HEAD_RADIUS)  # room to mirror the borders
    canvas = np.zeros((side, side, 3), np.uint8)
    out = np.empty((height, width, 2), np.float32)
    for r in tiled.canvas_segments(height, tile, halo):
        for c in tiled.canvas_segments(width, tile, halo):
            h, w = r.crop_stop - r.crop_start, c.crop_stop - c.crop_start
            canvas[:h, :w] = rgb[r.crop_start:r.crop_stop, c.crop_start:c.crop_stop]
            crop_out = np.asarray(_trace_canvas(featex_params, head_vars, canvas, np.asarray((h, w), np.int32),
                                                cfg=cfg, dtype=dtype))
            out[r.start : r.stop, c.start : c.stop] = crop_out[r.start - r.crop_start : r.stop - r.crop_start,
                                                               c.start - c.crop_start : c.stop - c.crop_start]
    return out


def trace_tile(height: int, width: int, cfg: ModelConfig, classes: int) -> int:
    """The tile of tiled.choose_tile, or the largest smaller one of tiled.TILE_CHOICES whose canvas
    holds at most MAX_TILE_LOGITS logits of `classes` classes."""
    tile = tiled.choose_tile(height, width, cfg, HEAD_RADIUS)
    halo = featex.receptive_radius(cfg) + HEAD_RADIUS
    for smaller in tiled.TILE_CHOICES:
        if smaller <= tile and (smaller + 2 * halo) ** 2 * classes <= MAX_TILE_LOGITS:
            return smaller
    return tiled.TILE_CHOICES[-1]


def _classes(head_vars) -> int:
    return int(head_vars["imc"]["kernel"].shape[-1])


def _fits(compiled, budget_bytes: Optional[int]) -> bool:
    """The rule of `tiled.whole_image_program`: XLA's analysis within the share of the free memory."""
    needed = tiled.program_bytes(compiled)
    budget = tiled.available_memory_bytes() if budget_bytes is None else budget_bytes
    return needed is None or budget is None or needed <= tiled.WHOLE_IMAGE_MEMORY_SHARE * budget


class Tracer:
    """An IMC model ready to trace images at one level: parameters on the device, tiled on
    canvases of one size (one compilation for every image size) as `predict.Predictor` tiles."""

    def __init__(self, cfg: ModelConfig, variables: dict, *, level=DEFAULT_LEVEL, dtype="float32",
                 tile: Optional[int] = None, max_untiled_pixels: int = predict.DEFAULT_MAX_UNTILED_PIXELS,
                 memory_budget_bytes: Optional[int] = None):
        self.from_level = checkpoint_level(cfg)
        model.check_variables(variables, cfg)
        if tile is not None and int(tile) < 1:
            raise ValueError(f"tile must be a positive number of pixels or None, got {tile}")
        self.cfg = cfg
        self.level = taxonomy.level_index(level)
        self.variables = jax.device_put(variables)
        self.head_vars = head_variables(self.variables, self.from_level, self.level)
        self.dtype = jnp.dtype(dtype)
        self.tile = None if tile is None else int(tile)
        self.max_untiled_pixels = int(max_untiled_pixels)
        self.memory_budget_bytes = memory_budget_bytes
        self._whole: dict = {}  # (height, width) -> compiled program, or None: tiled
        self.provenance: Optional[dict] = None

    @classmethod
    def from_checkpoint(cls, directory, *, step: provenance.StepChoice = provenance.DEFAULT_STEP, **kwargs) -> "Tracer":
        """An IMC checkpoint directory; a ManTra-Net one (or any other kind) is refused in one line
        (ValueError from `checkpoint_level`)."""
        from mantra_jax import checkpoint  # Orbax is only needed here

        cfg, variables, record = checkpoint.load_model_at(directory, step)
        tracer = cls(cfg, variables, **kwargs)
        tracer.provenance = record
        return tracer

    def _program(self, height: int, width: int):
        if self.tile is not None or height * width > self.max_untiled_pixels:
            return None
        if (height, width) not in self._whole:
            spec = jax.ShapeDtypeStruct((height, width, 3), jnp.uint8)
            compiled = whole_image_trace.lower(self.variables["params"]["Featex"], self.head_vars, spec, self.cfg,
                                               self.dtype).compile()
            self._whole[(height, width)] = compiled if _fits(compiled, self.memory_budget_bytes) else None
        return self._whole[(height, width)]

    def trace(self, rgb) -> TraceMap:
        """The trace of an image array (uint8 RGB, or what images.to_rgb_uint8 converts)."""
        rgb = images.to_rgb_uint8(rgb, "image array")
        program = self._program(*rgb.shape[:2])
        featex_params = self.variables["params"]["Featex"]
        if program is not None:
            return _to_trace(program(featex_params, self.head_vars, rgb), self.level)
        return _to_trace(tiled_trace(featex_params, self.head_vars, rgb, self.cfg, tile=self.tile,
                                     dtype=self.dtype), self.level)


def same_featex(cfg_a: ModelConfig, variables_a: dict, cfg_b: ModelConfig, variables_b: dict) -> bool:
    """Whether two models have the same feature extractor: equal Featex configuration fields and
    bit-equal Featex parameters (a half-freeze model and the IMC checkpoint it started from)."""
    if config_lib.featex_config_fields(cfg_a) != config_lib.featex_config_fields(cfg_b):
        return False
    a, b = (jax.device_get(v["params"]["Featex"]) for v in (variables_a, variables_b))
    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
        return False
    return all(np.shape(x) == np.shape(y) and np.array_equal(x, y)
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


class MaskAndTrace:
    """The forgery mask of a `predict.Predictor` and the trace of a `Tracer` for each image. When
    the two share their Featex (`same_featex`, and one computation dtype) Featex runs once: one
    whole-image program, or the tiled mask pass with the trace as its `tiled.FeatureHead`; else
    each runs its own. The tiling rule is the predictor's."""

    def __init__(self, predictor: predict.Predictor, tracer: Tracer):
        self.predictor, self.tracer = predictor, tracer
        self.shared = predictor.dtype == tracer.dtype and same_featex(predictor.cfg, predictor.variables, tracer.cfg,
                                                                       tracer.variables)
        self._whole: dict = {}

    def _program(self, height: int, width: int):
        p = self.predictor
        if p.tile is not None or height * width > p.max_untiled_pixels:
            return None
        if (height, width) not in self._whole:
            spec = jax.ShapeDtypeStruct((height, width, 3), jnp.uint8)
            compiled = whole_image_mask_and_trace.lower(p.variables, self.tracer.head_vars, spec, p.cfg, p.dtype).compile()
            self._whole[(height, width)] = compiled if _fits(compiled, p.memory_budget_bytes) else None
        return self._whole[(height, width)]

    def __call__(self, rgb) -> tuple[np.ndarray, TraceMap]:
        """(float32 H x W forgery probabilities, TraceMap) of an image array."""
        if not self.shared:
            return self.predictor.predict(rgb), self.tracer.trace(rgb)
        rgb = images.to_rgb_uint8(rgb, "image array")
        p, level = self.predictor, self.tracer.level
        program = self._program(*rgb.shape[:2])
        if program is not None:
            prob, out = program(p.variables, self.tracer.head_vars, rgb)
            return np.asarray(prob), _to_trace(out, level)
        head = tiled.FeatureHead(trace_from_features, self.tracer.head_vars, 2, HEAD_RADIUS)
        tile = p.tile or trace_tile(*rgb.shape[:2], p.cfg, _classes(self.tracer.head_vars))
        prob, out = tiled.canvas_probabilities(p.variables, rgb, p.cfg, tile=tile, dtype=p.dtype, feature_head=head)
        return prob, _to_trace(out, level)


# --------------------------------------------------------------------------------------------
# Palette, images, legend, summary
# --------------------------------------------------------------------------------------------
def _redmean_sq(a_Nx3, b_3) -> np.ndarray:
    """512 x the squared "redmean" distance, in exact integers (so the palette cannot depend on
    floating-point rounding)."""
    a, b = np.asarray(a_Nx3, np.int64), np.asarray(b_3, np.int64)
    rsum = a[:, 0] + b[0]
    d = a - b
    return (1024 + rsum) * d[:, 0] ** 2 + 2048 * d[:, 1] ** 2 + (1534 - rsum) * d[:, 2] ** 2


@functools.lru_cache(maxsize=1)
def _palette_sequence() -> np.ndarray:
    steps = np.arange(0, 256, 17)
    lattice = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
    # No greys or near-greys (the uncertainty colour), no colours too dark to tell apart.
    candidates = lattice[(lattice.max(1) - lattice.min(1) >= 68) & (lattice.max(1) >= 119)]
    nearest = _redmean_sq(candidates, UNCERTAIN_RGB)
    chosen = []
    for _ in range(taxonomy.LEVEL_SIZES[-1]):
        i = int(np.argmax(nearest))  # the first of equals: deterministic
        chosen.append(candidates[i])
        nearest = np.minimum(nearest, _redmean_sq(candidates, candidates[i]))
    out = np.asarray(chosen, np.uint8)
    out.setflags(write=False)
    return out


def palette(level) -> np.ndarray:
    """uint8 (num_classes(level), 3) RGB: class i of any level is colour i of one fixed sequence."""
    return _palette_sequence()[: taxonomy.num_classes(level)]


def confidence(top_prob, level) -> np.ndarray:
    """How far a pixel's top probability p is from a uniform guess, in [0, 1]: log(p K) / log(K) for
    the K classes of `level` (0 at chance, p = 1/K; 1 at certainty). The same share of the way from
    chance to certainty means the same at every level, where p itself does not: a small model's
    top level-1 probability of 0.12 (K = 27) and level-5 one of 0.016 (K = 380) both give 0.35."""
    k = taxonomy.num_classes(level)
    p = np.clip(np.asarray(top_prob, np.float32), 1.0 / k, 1.0)
    return (np.log(p * k) / np.log(k)).astype(np.float32)


def trace_image(trace: TraceMap, threshold: float = DEFAULT_THRESHOLD, rgb=None) -> np.ndarray:
    """uint8 H x W x 3 RGB: each pixel's class colour over the photo `rgb` (drawn in grey, so that
    only the classes carry colour; UNCERTAIN_RGB without a photo), with an opacity of
    TRACE_MAX_ALPHA x its `confidence`; pixels whose top probability is below `threshold` show the
    grey photo alone."""
    colours = palette(trace.level)[trace.class_map].astype(np.float32)
    if rgb is None:
        base = np.broadcast_to(np.asarray(UNCERTAIN_RGB, np.float32), colours.shape)
    else:
        grey = cv2.cvtColor(images.to_rgb_uint8(rgb, "image array"), cv2.COLOR_RGB2GRAY).astype(np.float32)
        base = np.repeat(grey[..., None], 3, axis=-1)
    alpha = TRACE_MAX_ALPHA * confidence(trace.top_prob, trace.level)
    alpha = np.where(trace.top_prob < threshold, 0.0, alpha)[..., None]
    return np.rint((1.0 - alpha) * base + alpha * colours).astype(np.uint8)


def write_trace_png(path, trace: TraceMap, threshold: float = DEFAULT_THRESHOLD, rgb=None) -> None:
    predict.write_png(path, trace_image(trace, threshold, rgb))


def legend_image(level, threshold: float = DEFAULT_THRESHOLD, rows_per_column: int = 48) -> np.ndarray:
    """uint8 RGB image: a title, then one swatch and name per class of `level` (in columns of at
    most `rows_per_column`), and the uncertainty grey."""
    level = taxonomy.level_index(level)
    names = taxonomy.class_names(level)
    entries = [(f"{i}  {name}", tuple(int(v) for v in colour)) for i, (name, colour) in
               enumerate(zip(names, palette(level)))]
    if threshold > 0:
        entries.append((f"top probability below {threshold:g}: the photo alone", UNCERTAIN_RGB))
    font, scale, line, swatch, pad = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 18, 12, 8
    title = (f"manipulation trace, level {level} ({taxonomy.LEVEL_NAMES[level]}, the paper's name; "
             f"{len(names)} classes)")
    shading = (f"opacity = confidence log(p K)/log K: none at chance (p = 1/{len(names)}), full at p = 1")
    columns = [entries[i : i + rows_per_column] for i in range(0, len(entries), rows_per_column)]
    widths = [swatch + 6 + max(cv2.getTextSize(text, font, scale, 1)[0][0] for text, _ in col) + 2 * pad
              for col in columns]
    width = max(sum(widths) + pad, cv2.getTextSize(title, font, scale, 1)[0][0] + 2 * pad,
                cv2.getTextSize(shading, font, scale, 1)[0][0] + 2 * pad)
    height = line * (3 + min(rows_per_column, len(entries))) + 2 * pad
    image = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(image, title, (pad, pad + 12), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    # The shading: the first class's colour from no confidence to full, over mid grey.
    ramp = np.linspace(0.0, TRACE_MAX_ALPHA, 160, dtype=np.float32)[None, :, None]
    strip = (1 - ramp) * np.asarray(UNCERTAIN_RGB, np.float32) + ramp * palette(level)[0].astype(np.float32)
    y = pad + line + 4
    image[y : y + swatch, pad : pad + 160] = np.rint(np.repeat(strip, swatch, axis=0)).astype(np.uint8)
    cv2.putText(image, shading, (pad, y + swatch + 14), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    x = pad
    for col, col_width in zip(columns, widths):
        for row, (text, colour) in enumerate(col, start=3):  # below the title and the shading
            y = pad + row * line
            cv2.rectangle(image, (x, y + 2), (x + swatch, y + 2 + swatch), colour, -1)
            cv2.putText(image, text, (x + swatch + 6, y + 12), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
        x += col_width
    return image


def write_legend_png(folder, level, threshold: float = DEFAULT_THRESHOLD) -> Path:
    """Writes `folder`/trace_legend_L<level>.png and returns its path."""
    path = Path(folder) / legend_name(taxonomy.level_index(level))
    predict.write_png(path, legend_image(level, threshold))
    return path


def class_counts(trace: TraceMap, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Pixels per class of the trace's level, counting those the map draws in a class colour (top
    probability at least `threshold`)."""
    shown = trace.class_map[trace.top_prob >= threshold]
    return np.bincount(shown.ravel(), minlength=taxonomy.num_classes(trace.level))


def class_shares(trace: TraceMap, threshold: float = DEFAULT_THRESHOLD) -> list[tuple[str, float]]:
    """(class name, share of the image's pixels) of every class the map draws (some pixel's argmax
    with a top probability at least `threshold`), by decreasing share (equal shares by class id)."""
    names = taxonomy.class_names(trace.level)
    counts = class_counts(trace, threshold)
    order = sorted(np.flatnonzero(counts), key=lambda i: (-counts[i], i))
    return [(names[i], float(counts[i]) / trace.class_map.size) for i in order]


def trace_summary(trace: TraceMap, threshold: float = DEFAULT_THRESHOLD, coverage: float = SUMMARY_COVERAGE,
                  max_others: int = SUMMARY_MAX_OTHERS) -> dict:
    """One flat row (keys TRACE_SUMMARY_FIELDS) for summary.csv, saying what the map shows: shares
    count the pixels drawn in each class colour (top probability at least `threshold`; all of
    them at the default 0) as shares of the image; trace_below_threshold is the share left
    uncoloured, and the dominant class is empty when that is every pixel. trace_others lists the
    next classes, at most `max_others`, until they and the dominant one cover `coverage` of the
    pixels, as "name=share; name=share" (class names hold no "=" nor ";")."""
    shares = class_shares(trace, threshold) or [("", 0.0)]
    dominant, dominant_share = shares[0]
    others, covered = [], dominant_share
    for name, share in shares[1:]:
        if covered >= coverage or len(others) == max_others:
            break
        others.append(f"{name}={share:.4f}")
        covered += share
    return {
        "trace_level": trace.level,
        "trace_dominant": dominant,
        "trace_dominant_share": round(dominant_share, 6),
        "trace_others": "; ".join(others),
        "trace_below_threshold": round(float(np.mean(trace.top_prob < threshold)), 6),
    }
