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
N x H x W x 3) -> N x H x W`` likelihoods in [0, 1]: ``per_image`` adapts a single-image one, and
a ManTra-Net network's is ``mantra_jax.infer.predict.Predictor.predict_batch``. The figures are drawn by
mantra_jax/metrics/plots.py.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from mantra_jax import provenance
from mantra_jax.data import forgeries
from mantra_jax.data import masks as masks_lib
from mantra_jax.data.photos import PatchIndex
from mantra_jax.metrics import pixel as pixel_metrics
from mantra_jax.metrics import plots
from mantra_jax.imc import manipulations, taxonomy

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
    from mantra_jax.data.stream import PatchSource  # noqa: PLC0415  (grain only when a folder is read)

    entries = index.entries(split)
    if not entries:
        raise ValueError(f"{index.root}: the {split!r} split has no {index.patch_size}x{index.patch_size} "
                         "patch (too few photos in the folder?)")
    rng = np.random.default_rng(np.random.SeedSequence([seed, tag, 0]))
    rounds = -(-n // len(entries))
    order = np.concatenate([rng.permutation(len(entries)) for _ in range(rounds)])[:n]
    source = PatchSource(index.root, [entries[i] for i in order], index.patch_size)
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
            # Copy-moves neither scaled nor rotated stay exact whole-pixel copies here (the
            # generator's default, not the training pipeline's resampled ones).
            image, mask = forgeries.forge(kind, patch, donor, mask, rng, subpixel_prob=0.0)
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
        axis = plots.parameter_axis(type_name)
        table.append([type_name, members[0]["family"], "-" if axis is None else axis.split(" (")[0],
                      len(members), float(np.mean(aucs)), f"{aucs[low]:.3f} ({members[low]['param'] or '-'})",
                      f"{aucs[high]:.3f} ({members[high]['param'] or '-'})"])
    return table


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
    figures: list[Path] = []
    if sensitivity_rows is not None:
        sens_csv = write_csv(out_dir / "sensitivity.csv", sensitivity_rows, SENSITIVITY_COLUMNS)
        figures += plots.plot_sensitivity(out_dir, sensitivity_rows)
    if robustness_rows is not None:
        rob_csv = write_csv(out_dir / "robustness.csv", robustness_rows, ROBUSTNESS_COLUMNS)
        figures.append(plots.plot_robustness(out_dir / "robustness.png", robustness_rows))
    return StudyFiles(sens_csv, rob_csv, tuple(figures))


# --------------------------------------------------------------------------------------------
# Both studies
# --------------------------------------------------------------------------------------------
# A setting of `evaluate_checkpoint` <- the trainer's flag of the same meaning (experiments/mantranet.py).
TRAINER_FLAGS = {"data_dir": "data_dir", "patch": "patch_size"}


def run_studies(predict_batch: PredictBatchFn, index: PatchIndex, out_dir, *, split: str = "test",
                per_param: int = 20, types=(), families=(), robust_samples: int = 200,
                kinds=forgeries.FORGERY_TYPES, downscale_factors=DEFAULT_DOWNSCALE_FACTORS,
                jpeg_qualities=DEFAULT_JPEG_QUALITIES, blur_kernels=DEFAULT_BLUR_KERNELS,
                edge_band: int = DEFAULT_EDGE_BAND, studies: Sequence[str] = ("sensitivity", "robustness"),
                seed: int = 0, batch_size: int = 8, progress: bool = True,
                metadata: Optional[dict] = None) -> StudyFiles:
    """The `studies` ("sensitivity", "robustness") with any batch predictor on a patch index; writes
    the CSV files, the plots and run.json (`metadata` with the study's settings)."""
    from mantra_jax.metrics.progress import ProgressLine  # noqa: PLC0415

    unknown = set(studies) - {"sensitivity", "robustness"}
    if unknown or not studies:
        raise ValueError(f"studies must be among 'sensitivity' and 'robustness', got {list(studies)}")

    def bar(label):
        line = None

        def update(done, total):
            nonlocal line
            line = line or ProgressLine(total, label)
            line.update(done)

        return update if progress else None

    levels = robustness_levels(downscale_factors, jpeg_qualities, blur_kernels)  # checked up front
    leaves = select_leaves(list(types) or None, list(families) or None) if "sensitivity" in studies else []
    sens_rows = rob_rows = None
    if "sensitivity" in studies:
        patches = pristine_patches(index, per_param, seed=seed, split=split, tag=1)
        sens_rows = run_sensitivity(predict_batch, patches, leaves, seed=seed, batch_size=batch_size,
                                    progress=bar("sensitivity"))
    if "robustness" in studies:
        patches = pristine_patches(index, robust_samples, seed=seed, split=split, tag=2)
        rob_rows = run_robustness(
            predict_batch, patches, seed=seed, kinds=list(kinds), downscale_factors=levels.get("downscale", ()),
            jpeg_qualities=levels.get("jpeg", ()), blur_kernels=levels.get("edge_blur", ()), half_width=edge_band,
            batch_size=batch_size, progress=bar("robustness"))
    files = write_outputs(out_dir, sens_rows, rob_rows)
    run_info = dict(metadata or {}, data_dir=str(index.root), split=split, patch=index.patch_size,
                    per_param=per_param, n_leaves=len(leaves), robust_samples=robust_samples, kinds=list(kinds),
                    edge_band=edge_band, seed=seed)
    (Path(out_dir) / "run.json").write_text(json.dumps(run_info, indent=1))
    return files


def evaluate_checkpoint(checkpoint, out_dir, *, data_dir: Optional[str] = None, patch: Optional[int] = None,
                        step: provenance.StepChoice = provenance.DEFAULT_STEP, precision: str = "float32",
                        batch_size: int = 8, **study) -> tuple[StudyFiles, dict]:
    """`run_studies` on a ManTra-Net checkpoint; returns the files and the checkpoint's record
    (mantra_jax.provenance: the step scored and why). What the checkpoint knows is the default:
    `data_dir` and `patch` left None come from the trainer's flags.txt (--data_dir,
    --patch_size), else the bundled photos and 256; run.json lists those taken from it."""
    from mantra_jax.data import bundled, photos  # noqa: PLC0415
    from mantra_jax.infer.predict import Predictor  # noqa: PLC0415  (JAX only when a model is run)

    settings, taken = provenance.settings_from_checkpoint(
        checkpoint, {"data_dir": data_dir, "patch": patch}, TRAINER_FLAGS, {"data_dir": "", "patch": 256})
    folder = settings["data_dir"] or bundled.default_photo_dir()
    index = photos.build_patch_index(folder, patch=settings["patch"])
    predictor = Predictor.from_checkpoint(checkpoint, step=step, dtype=precision)
    if batch_size > 1:
        predict_batch = functools.partial(predictor.predict_batch, batch_size=batch_size)
    else:
        predict_batch = per_image(predictor.predict)
    files = run_studies(predict_batch, index, out_dir, batch_size=batch_size, **study,
                        metadata=dict(predictor.provenance, precision=precision, settings_from_checkpoint=taken))
    return files, predictor.provenance
