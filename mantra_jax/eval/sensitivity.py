"""Sensitivity and robustness of a forgery localiser on synthesised forgeries (the paper's Fig. 4).

Sensitivity (Fig. 4a): for every leaf of the IMC bank (a manipulation type and one parameter),
``per_param`` enhancement forgeries ``Z = P * (1 - M) + y(P) * M`` are made from pristine patches
P of one split (the test split by default) and random masks M, with y the leaf's manipulation;
the score is the pixel ROC AUC per image, averaged over the images (pixel_metrics). Sample i uses
the same patch and mask for every leaf (only the manipulation and its noise change), so the
curves over a parameter compare like with like. The blend is hard-edged (no feathering): the
ground truth is exactly the manipulated region.

Robustness (Fig. 4b): ``n_samples`` forgeries of the kinds in ``kinds`` (by default the four
synthetic kinds of the training data, splicing / copy-move / removal / enhancement with a random
IMC leaf, taken in turn, each generator with its own default feathering), then one attack at one
strength at a time:

* ``downscale`` by a factor (INTER_AREA); the network sees the smaller image and the mask is
  downscaled with it (area-averaged, a pixel forged when at least half of it was): no upscaling
  back, which would add interpolation traces of its own;
* ``jpeg`` re-encoding at a quality (4:2:0, baseline; the IMC bank's encoder);
* ``edge_blur``: a Gaussian blur of kernel size k (OpenCV's sigma for k) pasted only in a band of
  ``edge_band`` pixels on each side of the forged region's outline (the mask dilated minus the
  mask eroded, elliptic structuring element), the usual retouch that hides a seam;

plus the clean score (attack "none"). Every row reports the per-image mean AUC, the pooled AUC
and the number of images with a defined AUC (a downscaled mask can vanish).

Masks are drawn with ``masks.random_mask`` at 1 % to 40 % of the patch and redrawn until at most
half of the patch is forged, so the paper's negation rule (for masks over 50 %) never applies; it
is off here. Everything is deterministic given the seed: sample i's patch and mask come from
(seed, i), a leaf's noise from (seed, i, leaf). The predictor is any ``predict_batch(uint8
N x H x W x 3) -> N x H x W`` likelihoods in [0, 1]; ``per_image`` adapts a single-image one and
``model_batch_predictor`` batches a ManTra-Net network.
"""
from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from mantra_jax.data import forgeries
from mantra_jax.data import masks as masks_lib
from mantra_jax.data.photos import PatchIndex
from mantra_jax.imc import manipulations, taxonomy
from mantra_jax.metrics import pixel as pixel_metrics

PredictFn = Callable[[np.ndarray], np.ndarray]  # uint8 H x W x 3 -> H x W
PredictBatchFn = Callable[[np.ndarray], np.ndarray]  # uint8 N x H x W x 3 -> N x H x W
Progress = Callable[[int, int], None]

ATTACKS = ("downscale", "jpeg", "edge_blur")
DEFAULT_DOWNSCALE_FACTORS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
DEFAULT_JPEG_QUALITIES = (100, 90, 80, 70, 60, 50)
DEFAULT_BLUR_KERNELS = (3, 5, 7, 9, 11, 13, 15)
DEFAULT_EDGE_BAND = 4
DEFAULT_AREA_RANGE = (0.01, 0.4)
MAX_FORGED_FRACTION = 0.5
SENSITIVITY_COLUMNS = ("type", "param", "auc", "n", "auc_pooled", "family", "label", "leaf")
ROBUSTNESS_COLUMNS = ("attack", "level", "auc", "n", "auc_pooled")

# Tags that keep the random streams of the two studies apart.
_SENSITIVITY_TAG, _ROBUSTNESS_TAG = 0x5E5, 0x20B


# --------------------------------------------------------------------------------------------
# Predictors
# --------------------------------------------------------------------------------------------
def per_image(predict_fn: PredictFn) -> PredictBatchFn:
    """A batch predictor that calls a single-image predictor on each image."""

    def predict_batch(images_NxHxWx3: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(predict_fn(image), np.float32) for image in images_NxHxWx3])

    return predict_batch


def model_batch_predictor(cfg, variables: dict, *, batch_size: int = 8, dtype=None) -> PredictBatchFn:
    """sigmoid(ManTra-Net logits) on whole batches in one compiled call.

    Shorter batches are padded to ``batch_size`` (one compilation per image size). Inference
    uses the stored batch-norm statistics and per-image anomaly statistics, so an image's
    prediction does not depend on its batch neighbours.
    """
    import jax  # noqa: PLC0415  (the rest of the module needs no JAX)
    import jax.numpy as jnp  # noqa: PLC0415

    from mantra_jax.nn import model  # noqa: PLC0415

    if cfg.head != "ladn":
        raise ValueError(f"a forgery localiser (head 'ladn') is needed; this model has the {cfg.head!r} head")
    dtype = jnp.float32 if dtype is None else dtype
    device_variables = jax.device_put(variables)

    @jax.jit
    def probabilities(variables_, rgb_NxHxWx3):
        logits = model.apply(variables_, model.preprocess(rgb_NxHxWx3), cfg, dtype=dtype)["logits"]
        return jax.nn.sigmoid(logits)

    def predict_batch(images_NxHxWx3: np.ndarray) -> np.ndarray:
        n = len(images_NxHxWx3)
        if n > batch_size:
            return np.concatenate([predict_batch(images_NxHxWx3[s:s + batch_size]) for s in range(0, n, batch_size)])
        padded = np.concatenate([images_NxHxWx3, np.repeat(images_NxHxWx3[-1:], batch_size - n, axis=0)])
        return np.asarray(probabilities(device_variables, padded))[:n]

    return predict_batch


# --------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------
def select_leaves(types: Optional[Sequence[str]] = None,
                  families: Optional[Sequence[str]] = None) -> list[manipulations.Manipulation]:
    """The IMC leaves of the given types and/or families (None: no restriction), in leaf order."""
    chosen = list(manipulations.REGISTRY)
    if types:
        for name in types:
            manipulations.of_type(name)  # a clear KeyError for an unknown type
        chosen = [m for m in chosen if m.type in set(types)]
    if families:
        for name in families:
            manipulations.of_family(name)
        chosen = [m for m in chosen if m.family in set(families)]
    if not chosen:
        raise ValueError(f"no IMC leaf has a type in {list(types or [])} and a family in {list(families or [])}")
    return chosen


def bounded_mask(rng: np.random.Generator, height: int, width: int,
                 area_range: tuple[float, float] = DEFAULT_AREA_RANGE, tries: int = 20) -> np.ndarray:
    """A random mask forging at most half of the image (redrawn until it does)."""
    for _ in range(tries):
        mask = masks_lib.random_mask(rng, height, width, area_range=area_range)
        if mask.mean() <= MAX_FORGED_FRACTION:
            return mask
    # Practically unreachable with area_range below one half; the complement is then as valid.
    return (1 - mask).astype(np.uint8) if mask.mean() > MAX_FORGED_FRACTION else mask


def pristine_patches(index: PatchIndex, n: int, *, seed: int, split: str = "test", tag: int = 0) -> list[np.ndarray]:
    """``n`` patches of ``split``, every patch used once before any is used twice, in a seeded order."""
    from mantra_jax.data.imc_pipeline import ImcSource  # noqa: PLC0415  (grain only when a folder is read)

    entries = index.entries(split)
    if not entries:
        raise ValueError(f"{index.root}: the {split!r} split has no {index.patch_size}x{index.patch_size} "
                         "patch (too few photos in the folder?)")
    rng = np.random.default_rng(np.random.SeedSequence([seed, tag, 0]))
    rounds = -(-n // len(entries))
    order = np.concatenate([rng.permutation(len(entries)) for _ in range(rounds)])[:n]
    source = ImcSource(index.root, [entries[i] for i in order], index.patch_size)
    return [source[i] for i in range(n)]


def _sample_rng(seed: int, tag: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, tag, *keys]))


def base_masks(patches: Sequence[np.ndarray], *, seed: int, tag: int,
               area_range: tuple[float, float] = DEFAULT_AREA_RANGE) -> list[np.ndarray]:
    return [bounded_mask(_sample_rng(seed, tag, 1, i), *patch.shape[:2], area_range=area_range)
            for i, patch in enumerate(patches)]


def sensitivity_forgeries(patches: Sequence[np.ndarray], leaves: Sequence[manipulations.Manipulation], *,
                          seed: int, area_range: tuple[float, float] = DEFAULT_AREA_RANGE
                          ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(leaf id, forged image, mask) for every leaf and every patch, leaf by leaf."""
    masks = base_masks(patches, seed=seed, tag=_SENSITIVITY_TAG, area_range=area_range)
    for leaf in leaves:
        manipulate = _leaf_function(leaf.leaf)
        for i, (patch, mask) in enumerate(zip(patches, masks)):
            rng = _sample_rng(seed, _SENSITIVITY_TAG, 2, i, leaf.leaf)
            image, mask_out = forgeries.enhancement(patch, mask, rng, manipulate=manipulate, feather_prob=0.0)
            yield leaf.leaf, image, mask_out


def _leaf_function(leaf: int):
    def manipulate(image, rng):
        return manipulations.apply(leaf, image, rng)

    return manipulate


def robustness_base(patches: Sequence[np.ndarray], *, seed: int,
                    kinds: Sequence[str] = forgeries.FORGERY_TYPES,
                    area_range: tuple[float, float] = DEFAULT_AREA_RANGE, tries: int = 10
                    ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(kind, forged image, mask) per patch; kinds taken in turn; splicing's donor is the next patch.

    A forgery whose mask comes out empty or over half the patch (copy-move may enlarge it) is
    drawn again from a fresh stream.
    """
    unknown = [k for k in kinds if k not in forgeries.FORGERY_TYPES]
    if unknown or not kinds:
        raise ValueError(f"forgery kinds must be a non-empty subset of {forgeries.FORGERY_TYPES}, got {list(kinds)}")
    out = []
    for i, patch in enumerate(patches):
        kind = kinds[i % len(kinds)]
        donor = patches[(i + 1) % len(patches)]
        for attempt in range(tries):
            rng = _sample_rng(seed, _ROBUSTNESS_TAG, 3, i, attempt)
            mask = bounded_mask(rng, *patch.shape[:2], area_range=area_range)
            if kind == "splicing":
                image, mask = forgeries.splicing(patch, donor, mask, rng)
            elif kind == "copy_move":
                image, mask = forgeries.copy_move(patch, mask, rng)
            elif kind == "removal":
                image, mask = forgeries.removal(patch, mask, rng)
            else:
                image, mask = forgeries.enhancement(patch, mask, rng)
            if 0 < mask.mean() <= MAX_FORGED_FRACTION:
                break
        out.append((kind, image, mask))
    return out


def downscale(image: np.ndarray, mask: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Both downscaled by ``factor`` (area averaging); a pixel is forged if half its area was."""
    if not 0.0 < factor <= 1.0:
        raise ValueError(f"downscale factor must be in (0, 1], got {factor}")
    if factor == 1.0:
        return image, mask
    height, width = mask.shape
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) >= 0.5
    return small, small_mask.astype(np.uint8)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    return manipulations.jpeg_compress(image, None, quality=int(quality))


def edge_band(mask: np.ndarray, half_width: int) -> np.ndarray:
    """The pixels within ``half_width`` of the outline: dilate(mask) minus erode(mask)."""
    side = 2 * int(half_width) + 1
    element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    mask = np.ascontiguousarray(mask, np.uint8)
    return (cv2.dilate(mask, element) - cv2.erode(mask, element)).astype(np.uint8)


def edge_blur(image: np.ndarray, mask: np.ndarray, kernel: int, half_width: int = DEFAULT_EDGE_BAND) -> np.ndarray:
    """A Gaussian blur of odd size ``kernel`` applied only in the band around the outline."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"blur kernel must be an odd positive size, got {kernel}")
    blurred = cv2.GaussianBlur(image, (kernel, kernel), 0)
    band = edge_band(mask, half_width).astype(bool)
    return np.where(band[..., None], blurred, image)


def attack(image: np.ndarray, mask: np.ndarray, name: str, level, *,
           half_width: int = DEFAULT_EDGE_BAND) -> tuple[np.ndarray, np.ndarray]:
    """(attacked image, its mask) for one attack of ATTACKS (or "none") at one strength."""
    if name == "none":
        return image, mask
    if name == "downscale":
        return downscale(image, mask, float(level))
    if name == "jpeg":
        return jpeg(image, int(level)), mask
    if name == "edge_blur":
        return edge_blur(image, mask, int(level), half_width), mask
    raise ValueError(f"unknown attack {name!r}; expected one of {ATTACKS} or 'none'")


def robustness_samples(base: Sequence[tuple[str, np.ndarray, np.ndarray]], levels: dict[str, Sequence],
                       *, half_width: int = DEFAULT_EDGE_BAND
                       ) -> Iterator[tuple[tuple[str, Any], np.ndarray, np.ndarray]]:
    """((attack, level), image, mask): the clean set first, then each attack level by level."""
    for _, image, mask in base:
        yield ("none", 0), image, mask
    for name, values in levels.items():
        for level in values:
            for _, image, mask in base:
                attacked, attacked_mask = attack(image, mask, name, level, half_width=half_width)
                yield (name, level), attacked, attacked_mask


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------
class _AucAccumulator:
    """Per-image AUCs and the statistics for the pooled AUC of one group of images (both exact)."""

    def __init__(self, bins: int):
        self.aucs: list[float] = []
        self.stats: list[pixel_metrics.ImageStats] = []

    def add(self, stats: pixel_metrics.ImageStats):
        auc = pixel_metrics.image_metrics(stats, negate_rule=False)["auc"]
        if auc is not None:
            self.aucs.append(auc)
        self.stats.append(stats)

    def result(self) -> dict:
        return {"auc": float(np.mean(self.aucs)) if self.aucs else None, "n": len(self.aucs),
                "auc_pooled": pixel_metrics.pooled_auc(self.stats, negate_rule=False)[0]}


def score_stream(items: Iterable[tuple[Any, np.ndarray, np.ndarray]], predict_batch: PredictBatchFn, *,
                 batch_size: int = 8, bins: int = pixel_metrics.DEFAULT_BINS, total: Optional[int] = None,
                 progress: Optional[Progress] = None) -> dict[Any, dict]:
    """Predicts every (key, image, mask) in batches of equal-sized images; AUCs per key, in order."""
    pixel_metrics.check_bins(bins)
    groups: dict[Any, _AucAccumulator] = {}
    pending: list[tuple[Any, np.ndarray, np.ndarray]] = []
    done = 0

    def flush():
        nonlocal done
        if not pending:
            return
        batch = np.stack([image for _, image, _ in pending])
        probs = np.asarray(predict_batch(batch))
        if probs.ndim == 4 and probs.shape[-1] == 1:
            probs = probs[..., 0]
        if probs.shape != batch.shape[:3]:
            raise ValueError(f"the predictor returned shape {probs.shape} for a batch of shape {batch.shape}")
        for (key, _, mask), prob in zip(pending, probs):
            groups.setdefault(key, _AucAccumulator(bins)).add(
                pixel_metrics.image_stats(prob, mask, bins=bins, name=str(key)))
        done += len(pending)
        pending.clear()
        if progress is not None:
            progress(done, total if total is not None else done)

    if progress is not None:
        progress(0, total if total is not None else 0)  # starts the clock before the first batch
    for item in items:
        if pending and (len(pending) >= batch_size or item[1].shape != pending[0][1].shape):
            flush()
        pending.append(item)
    flush()
    return {key: acc.result() for key, acc in groups.items()}


def run_sensitivity(predict_batch: PredictBatchFn, patches: Sequence[np.ndarray],
                    leaves: Sequence[manipulations.Manipulation], *, seed: int = 0, batch_size: int = 8,
                    bins: int = pixel_metrics.DEFAULT_BINS, area_range: tuple[float, float] = DEFAULT_AREA_RANGE,
                    progress: Optional[Progress] = None) -> list[dict]:
    """One row per leaf: type, param, auc (mean per image), n, auc_pooled, family, label, leaf."""
    items = sensitivity_forgeries(patches, leaves, seed=seed, area_range=area_range)
    scores = score_stream(items, predict_batch, batch_size=batch_size, bins=bins,
                          total=len(leaves) * len(patches), progress=progress)
    rows = []
    for leaf in leaves:
        record = taxonomy.LEAF_TABLE[leaf.leaf]
        rows.append({"type": leaf.type, "param": record.param, **scores[leaf.leaf], "family": leaf.family,
                     "label": leaf.label, "leaf": leaf.leaf})
    return rows


def run_robustness(predict_batch: PredictBatchFn, patches: Sequence[np.ndarray], *, seed: int = 0,
                   kinds: Sequence[str] = forgeries.FORGERY_TYPES,
                   downscale_factors: Sequence[float] = DEFAULT_DOWNSCALE_FACTORS,
                   jpeg_qualities: Sequence[int] = DEFAULT_JPEG_QUALITIES,
                   blur_kernels: Sequence[int] = DEFAULT_BLUR_KERNELS, half_width: int = DEFAULT_EDGE_BAND,
                   batch_size: int = 8, bins: int = pixel_metrics.DEFAULT_BINS,
                   area_range: tuple[float, float] = DEFAULT_AREA_RANGE,
                   progress: Optional[Progress] = None) -> list[dict]:
    """One row per (attack, level), the clean row ("none", 0) first."""
    levels = robustness_levels(downscale_factors, jpeg_qualities, blur_kernels)
    base = robustness_base(patches, seed=seed, kinds=kinds, area_range=area_range)
    total = len(base) * (1 + sum(len(v) for v in levels.values()))
    scores = score_stream(robustness_samples(base, levels, half_width=half_width), predict_batch,
                          batch_size=batch_size, bins=bins, total=total, progress=progress)
    return [{"attack": name, "level": level, **result} for (name, level), result in scores.items()]


def robustness_levels(downscale_factors: Sequence[float] = DEFAULT_DOWNSCALE_FACTORS,
                      jpeg_qualities: Sequence[int] = DEFAULT_JPEG_QUALITIES,
                      blur_kernels: Sequence[int] = DEFAULT_BLUR_KERNELS) -> dict[str, list]:
    """The attack strengths, checked: factors in (0, 1], qualities in 0..100, odd kernels."""
    factors = [float(f) for f in downscale_factors]
    qualities = [int(q) for q in jpeg_qualities]
    kernels = [int(k) for k in blur_kernels]
    if any(not 0.0 < f <= 1.0 for f in factors):
        raise ValueError(f"downscale factors must be in (0, 1], got {factors}")
    if any(not 0 <= q <= 100 for q in qualities):
        raise ValueError(f"JPEG qualities must be in 0..100, got {qualities}")
    if any(k < 1 or k % 2 == 0 for k in kernels):
        raise ValueError(f"blur kernels must be odd positive sizes, got {kernels}")
    return {name: values for name, values in
            (("downscale", factors), ("jpeg", qualities), ("edge_blur", kernels)) if values}


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
def write_csv(path, rows: Sequence[dict], columns: Sequence[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return path


# The parameter of each manipulation type, as its plots' x axis says it: name, symbol (the
# taxonomy's letter) and unit (mantra_jax/imc/manipulations.py documents each one).
_KERNEL = "kernel size K (pixels, K x K)"
PARAMETER_AXES = {
    "BoxBlur": _KERNEL, "GaussianBlur": _KERNEL, "MedianBlur": _KERNEL,
    "WaveletBlur": "std of the noise removed K (8-bit levels)",
    "JPEGCompress": "JPEG quality Q (0-100)",
    "JPEGDoubleCompress": "second JPEG quality Q2 (0-100; one line per first quality Q1)",
    "WEBPCompress": "WebP quality Q (0-100)",
    "GaussianNoise": "noise std S (8-bit levels)",
    "ImpluseNoise": "pixels set to black or white P (%)",
    "PoissonNoise": "noise std at mid-grey L (8-bit levels)",
    "UniformNoise": "noise half range M (8-bit levels)",
    "Quantization": "palette size C (colours)",
    "Dithering": None,  # a fixed 216-colour palette: no parameter
    "AutoContrast": "histogram share clipped at each end C (%)",
    "HistEq": "channels equalised C (bit mask: 1 red, 2 green, 4 blue)",
}


def parameter_axis(type_name: str) -> Optional[str]:
    """The x-axis label (parameter and unit) of a manipulation type; None for Dithering."""
    if type_name.endswith("Resize"):
        return "scale factor s (resized to s x size and back; one line per interpolation)"
    if type_name.endswith("Morph"):
        return "square structuring element side S (pixels)"
    if type_name not in PARAMETER_AXES:
        raise KeyError(f"no parameter axis for the manipulation type {type_name!r}")
    return PARAMETER_AXES[type_name]


@dataclasses.dataclass
class Panel:
    """One sensitivity panel: the types of a family that share a parameter axis."""

    title: str
    xlabel: str
    lines: list  # (legend label, x values, AUCs), x increasing
    flat: list = dataclasses.field(default_factory=list)  # (label, AUC) of parameterless types


def family_panels(family: str, rows: Sequence[dict]) -> list[Panel]:
    """The panels of one family's rows: one per parameter axis, in type order; double JPEG gets
    one line per first quality Q1 over the second quality Q2; a parameterless type (Dithering) is a
    dashed level in the family's first panel."""
    panels: dict[str, Panel] = {}
    points: dict[tuple[str, str], list[tuple[float, float]]] = {}
    flat = []
    for row in rows:
        if row["auc"] is None or row["auc"] == "":
            continue
        auc, type_name = float(row["auc"]), row["type"]
        value = taxonomy.LEAF_TABLE[int(row["leaf"])].param_value
        axis = parameter_axis(type_name)
        if value is None or axis is None:
            flat.append((f"{type_name} (no parameter)", auc))
            continue
        panel = panels.setdefault(axis, Panel(title=family, xlabel=axis, lines=[]))
        if isinstance(value, tuple):  # double JPEG: (Q1, Q2)
            label, x = f"first quality Q1 = {value[0]}", value[1]
            panel.title = f"{family}: {type_name} (saved at Q1, then at Q2)"
        else:
            label, x = type_name, value
        points.setdefault((axis, label), []).append((float(x), auc))
    for (axis, label), pts in points.items():
        pts.sort()
        panels[axis].lines.append((label, [p[0] for p in pts], [p[1] for p in pts]))
    for panel in panels.values():
        if panel.title == family:
            panel.title = f"{family}: " + ", ".join(label for label, _, _ in panel.lines)
        if "Q1 = " in (panel.lines[0][0] if panel.lines else ""):
            panel.lines.sort(key=lambda line: int(line[0].rsplit(" ", 1)[1]))
    out = list(panels.values())
    if flat:
        if not out:
            out.append(Panel(title=family, xlabel="(no parameter: one AUC per type)", lines=[]))
        out[0].flat = flat
    return out


def _draw_panel(ax, panel: Panel) -> None:
    for label, x, y in panel.lines:
        ax.plot(x, y, marker="o", markersize=3, linewidth=1.2, label=label)
    for label, auc in panel.flat:
        ax.axhline(auc, linestyle="--", linewidth=1.0, color="grey", label=label)
    ax.set_title(panel.title, fontsize=9)
    ax.set_xlabel(panel.xlabel, fontsize=8)
    ax.set_ylabel("pixel AUC (mean per image)", fontsize=8)
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    if panel.lines or panel.flat:
        ax.legend(fontsize=6, ncol=2 if len(panel.lines) + len(panel.flat) > 6 else 1)


def panel_figure(panels: Sequence[Panel], columns: int):
    """A matplotlib figure of the panels, `columns` to a row; (figure, axes)."""
    plt = _pyplot()
    columns = max(1, min(columns, len(panels)))
    grid_rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(grid_rows, columns, figsize=(5.2 * columns, 3.9 * grid_rows), squeeze=False)
    for ax, panel in zip(axes.ravel(), panels):
        _draw_panel(ax, panel)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return fig, axes


def plot_sensitivity(out_dir, rows: Sequence[dict]) -> list[Path]:
    """sensitivity_<family>.png per family (AUC against each parameter, one panel per parameter
    axis) and every panel in sensitivity.png."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_family: dict[str, list[dict]] = {}
    for row in rows:
        by_family.setdefault(row["family"], []).append(row)
    paths, every_panel = [], []
    for family, family_rows in by_family.items():
        panels = family_panels(family, family_rows)
        if not panels:
            continue
        every_panel += panels
        fig, _ = panel_figure(panels, columns=len(panels))
        paths.append(out_dir / f"sensitivity_{family}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    if every_panel:
        fig, _ = panel_figure(every_panel, columns=4)
        paths.append(out_dir / "sensitivity.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def type_summary(rows: Sequence[dict]) -> list[list]:
    """Per manipulation type: family, parameter axis, leaves scored, mean, min and max AUC with
    the parameters they occur at (rows as in sensitivity.csv, values numbers or their text)."""
    by_type: dict[str, list[dict]] = {}
    for row in rows:
        if row["auc"] not in (None, ""):
            by_type.setdefault(row["type"], []).append(row)
    table = []
    for type_name, members in by_type.items():
        aucs = [float(r["auc"]) for r in members]
        low, high = int(np.argmin(aucs)), int(np.argmax(aucs))
        axis = parameter_axis(type_name)
        table.append([type_name, members[0]["family"], "-" if axis is None else axis.split(" (")[0],
                      len(members), float(np.mean(aucs)), f"{aucs[low]:.3f} ({members[low]['param'] or '-'})",
                      f"{aucs[high]:.3f} ({members[high]['param'] or '-'})"])
    return table


_ATTACK_AXES = {"downscale": ("downscale factor (new size / old size)", True),
                "jpeg": ("JPEG quality Q (0-100)", True),
                "edge_blur": ("Gaussian kernel size in the edge band (pixels, k x k)", False)}


def plot_robustness(path, rows: Sequence[dict]) -> Path:
    """One panel per attack: AUC against the strength (stronger to the right), clean AUC dashed."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = next((r["auc"] for r in rows if r["attack"] == "none"), None)
    attacks = [a for a in ATTACKS if any(r["attack"] == a for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(attacks)), figsize=(4.6 * max(1, len(attacks)), 3.8), squeeze=False)
    for ax, name in zip(axes[0], attacks):
        points = [(float(r["level"]), r["auc"]) for r in rows if r["attack"] == name and r["auc"] is not None]
        xlabel, decreasing = _ATTACK_AXES[name]
        points.sort(reverse=decreasing)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", linewidth=1.5, label="attacked")
        if clean is not None:
            ax.axhline(clean, linestyle="--", color="grey", linewidth=1.0, label=f"clean ({clean:.3f})")
        if decreasing:
            ax.invert_xaxis()
        ax.set_xlabel(xlabel)
        ax.set_ylabel("pixel AUC (mean per image)")
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


@dataclasses.dataclass(frozen=True)
class StudyFiles:
    sensitivity_csv: Optional[Path] = None
    robustness_csv: Optional[Path] = None
    plots: tuple[Path, ...] = ()


def write_outputs(out_dir, sensitivity_rows: Optional[Sequence[dict]],
                  robustness_rows: Optional[Sequence[dict]]) -> StudyFiles:
    """sensitivity.csv + its plots and robustness.csv + robustness.png, for what was run."""
    out_dir = Path(out_dir)
    sens_csv = rob_csv = None
    plots: list[Path] = []
    if sensitivity_rows is not None:
        sens_csv = write_csv(out_dir / "sensitivity.csv", sensitivity_rows, SENSITIVITY_COLUMNS)
        plots += plot_sensitivity(out_dir, sensitivity_rows)
    if robustness_rows is not None:
        rob_csv = write_csv(out_dir / "robustness.csv", robustness_rows, ROBUSTNESS_COLUMNS)
        plots.append(plot_robustness(out_dir / "robustness.png", robustness_rows))
    return StudyFiles(sens_csv, rob_csv, tuple(plots))
