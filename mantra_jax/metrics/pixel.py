"""Pixel- and image-level forgery-localisation metrics from stored per-image statistics.

One pass over a benchmark stores, per image with a mask, the distinct predicted likelihoods
(sorted) with how many forged and how many pristine pixels hold each; two histograms of the
likelihood, over the forged and over the pristine pixels (``bins`` uniform bins over [0, 1]);
the image score (mean and max likelihood) and the size. Every metric variant below is
recomputed from these without running the model again:

* pixel ROC AUC per image (then averaged) and pooled over all pixels of a set, both exact:
  the Mann-Whitney statistic over the distinct values, ties counting half (tie-averaged
  ranks), the pooled one from a merge of every image's distinct values. There is no binning
  error whatever the spread of the likelihoods (weak models concentrate them). Cost, measured
  on a contended 2-core CPU: a megapixel float32 map holds 0.86 to 0.98 million distinct
  values, takes 0.2 s to sort and 2.0 to 2.5 MB of the compressed stats.npz (20 COVERAGE
  images, 4.0 megapixels: 9.9 MB); the pooled merge takes 0.2 to 1.3 s per million distinct
  values of the whole set and about 40 bytes of memory per distinct value;
* the paper's negation rule (ManTra-Net Table 8, after Huh et al. 2018): when more than 50 %
  of an image's ground-truth pixels are forged, its prediction is negated (p -> 1 - p) before
  the AUC is taken; on by default. One decision per image serves both AUCs (an image that is
  100 % forged has no AUC of its own, but is flipped in the pooled AUC), and the report lists,
  per metric, the images flipped;
* F1 and IoU at the fixed threshold 0.5, and the best-threshold ("oracle") F1, per image; each
  optionally with prediction inversion, max(F(p), F(1 - p)) per image (the TruFor /
  IMDL-BenCo "double" convention);
* image-level AUC and balanced accuracy against authentic images.

Statistics written before the distinct values were stored (histograms only) still load; their
AUCs then come from the histograms, and the report gives the certified bound on the binning
error: half the share of (forged, pristine) pixel pairs that fall in one bin.

Threshold convention: a pixel is predicted forged when ``p >= t``. The bin edges are k / bins
with ``bins`` a power of two, so 0.5 is an edge and ``floor(p * bins)`` is exact in binary
floating point: "p >= 0.5" is decided exactly, not up to a bin.

Policies (repeated in every summary):
* a mask with no forged pixel, or no pristine pixel, has no AUC: the image is left out of the
  per-image AUC mean, never scored 0; its pixels still enter the pooled AUC;
* a mask with no forged pixel is left out of the per-image F1 and IoU means (as TruFor does);
  authentic images given separately enter the image-level metrics only.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mantra_jax.errors import BadSetting

DEFAULT_BINS = 1024
FIXED_THRESHOLD = 0.5
# A float32 sigmoid may overshoot [0, 1] by rounding; anything beyond this is a predictor bug
# and is reported rather than clipped away.
_RANGE_TOLERANCE = 1e-5
_STATS_KEYS = ("names", "hist_forged", "hist_pristine", "score_mean", "score_max", "height", "width")
# The distinct values of every image, concatenated, image i's being [offsets[i], offsets[i + 1]);
# absent from files written before they were stored, and for images without them (authentic)
# an empty range flagged False in has_values.
_VALUE_KEYS = ("has_values", "value_offsets", "values", "value_forged", "value_pristine")


@dataclasses.dataclass(frozen=True)
class ImageStats:
    """What one pass stores about one image; every metric here is a function of these."""

    name: str
    hist_forged: np.ndarray  # int64[bins]: likelihood histogram over ground-truth forged pixels
    hist_pristine: np.ndarray  # int64[bins]: the same over pristine pixels
    score_mean: float  # mean pixel likelihood, the paper's image score
    score_max: float
    height: int
    width: int
    # The distinct likelihoods of the image, increasing, and how many forged and how many
    # pristine pixels hold each: the exact AUCs' input. None for authentic images and for
    # statistics written before they were stored.
    values: np.ndarray | None = None  # float64[n]
    value_forged: np.ndarray | None = None  # int64[n]
    value_pristine: np.ndarray | None = None  # int64[n]

    @property
    def bins(self) -> int:
        return int(self.hist_forged.shape[0])

    @property
    def n_forged(self) -> int:
        return int(self.hist_forged.sum())

    @property
    def n_pristine(self) -> int:
        return int(self.hist_pristine.sum())

    @property
    def forged_fraction(self) -> float:
        total = self.n_forged + self.n_pristine
        return self.n_forged / total if total else 0.0

    @property
    def exact(self) -> bool:
        """Whether the distinct values are stored, so that the AUCs are exact."""
        return self.values is not None

    def negated_by_rule(self, negate_rule: bool) -> bool:
        """The negation rule's one decision for this image, which every AUC follows."""
        return bool(negate_rule and self.forged_fraction > 0.5)


def check_bins(bins: int) -> int:
    """Returns ``bins`` if it is a power of two >= 2, so that 0.5 is an exact bin edge."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2 or bins & (bins - 1):
        raise BadSetting(f"bins must be a power of two >= 2 (so that 0.5 is an exact bin edge), got {bins!r}")
    return int(bins)


def image_stats(prob_HxW: np.ndarray, mask_HxW: np.ndarray | None, *, bins: int = DEFAULT_BINS,
                name: str = "") -> ImageStats:
    """Histograms one image's prediction over its forged and its pristine pixels.

    Args:
      prob_HxW: forgery likelihood per pixel, floats in [0, 1].
      mask_HxW: ground truth in {0, 1} (any non-zero value counts as forged), or None for an
        authentic image (every pixel pristine).
      bins: number of uniform bins over [0, 1], a power of two.
      name: the image's name, for reports and error messages.
    """
    bins = check_bins(bins)
    label = name or "prediction"
    prob = np.asarray(prob_HxW)
    if prob.ndim != 2:
        raise ValueError(f"{label}: expected an HxW likelihood map, got shape {prob.shape}")
    if mask_HxW is not None and np.shape(mask_HxW) != prob.shape:
        raise ValueError(f"{label}: prediction shape {prob.shape} differs from mask shape {np.shape(mask_HxW)}")
    prob = prob.astype(np.float64, copy=False)
    if not np.all(np.isfinite(prob)):
        raise ValueError(f"{label}: the likelihood map holds NaN or infinite values")
    lo, hi = float(prob.min()), float(prob.max())
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ValueError(f"{label}: likelihoods must lie in [0, 1], got range [{lo:.6g}, {hi:.6g}]")
    prob = np.clip(prob, 0.0, 1.0)
    # Scaling by a power of two is exact, so  p >= k / bins  <=>  floor(p * bins) >= k.
    bin_index = np.minimum(np.floor(prob * bins).astype(np.int64), bins - 1)
    forged = np.zeros(prob.shape, np.int64) if mask_HxW is None else (np.asarray(mask_HxW) != 0).astype(np.int64)
    counts = np.bincount((bin_index + bins * forged).ravel(), minlength=2 * bins).astype(np.int64)
    exact = {}
    if mask_HxW is not None:  # authentic images enter no pixel AUC
        values, inverse = np.unique(prob.ravel(), return_inverse=True)
        n = values.size
        per_value = np.bincount(inverse.ravel() + n * forged.ravel(), minlength=2 * n).astype(np.int64)
        exact = {"values": values, "value_forged": per_value[n:], "value_pristine": per_value[:n]}
    return ImageStats(
        name=name,
        hist_forged=counts[bins:],
        hist_pristine=counts[:bins],
        score_mean=float(prob.mean()),
        score_max=float(prob.max()),
        height=int(prob.shape[0]),
        width=int(prob.shape[1]),
        **exact,
    )


# --------------------------------------------------------------------------------------------
# Metrics from histograms
# --------------------------------------------------------------------------------------------
def histogram_auc(hist_pos: np.ndarray, hist_neg: np.ndarray) -> float | None:
    """ROC AUC of positives against negatives from binned scores; ties within a bin count half.

    Equals P(bin_pos > bin_neg) + P(bin_pos == bin_neg) / 2, the area under the binned ROC
    curve by the trapezoid rule. None when either class is empty (the AUC is undefined).
    """
    pos = np.asarray(hist_pos, np.float64)
    neg = np.asarray(hist_neg, np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return None
    neg_below = np.cumsum(neg) - neg
    return float(np.dot(pos, neg_below + 0.5 * neg) / (n_pos * n_neg))


def histogram_auc_bound(hist_pos: np.ndarray, hist_neg: np.ndarray) -> float | None:
    """The most by which :func:`histogram_auc` can differ from the exact AUC of the binned scores:
    half the share of (positive, negative) pairs that share a bin (their order inside the bin
    is unknown and counted half). 0 when every bin holds one distinct score."""
    pos = np.asarray(hist_pos, np.float64)
    neg = np.asarray(hist_neg, np.float64)
    if pos.sum() == 0 or neg.sum() == 0:
        return None
    return float(0.5 * np.dot(pos, neg) / (pos.sum() * neg.sum()))


def _image_auc(stats: ImageStats, negated: bool) -> tuple[float | None, float | None]:
    """(AUC, bound on its error) of one image: exact from the distinct values when stored."""
    if stats.exact:
        pos, neg, bound = stats.value_forged, stats.value_pristine, 0.0
    else:
        pos, neg = stats.hist_forged, stats.hist_pristine
        bound = histogram_auc_bound(pos, neg)
    # p -> 1 - p reverses the order of the values (of the bins: bin i becomes bins - 1 - i).
    auc = histogram_auc(pos[::-1], neg[::-1]) if negated else histogram_auc(pos, neg)
    return auc, (bound if auc is not None else None)


def pooled_auc(stats: Sequence[ImageStats], negate_rule: bool = True) -> tuple[float | None, float | None]:
    """(AUC over every pixel of every image, bound on its error), each image negated when the
    rule says so. Exact when every image stores its distinct values: they are merged (a flipped
    image contributes 1 - v, in float64), equal values pooled, and the Mann-Whitney statistic
    taken over the result; otherwise the sum of the histograms, with its bound."""
    if not stats:
        return None, None
    if all(s.exact for s in stats):
        values, pos, neg = [], [], []
        for s in stats:
            flip = s.negated_by_rule(negate_rule)
            values.append(1.0 - s.values[::-1] if flip else s.values)
            pos.append(s.value_forged[::-1] if flip else s.value_forged)
            neg.append(s.value_pristine[::-1] if flip else s.value_pristine)
        merged, inverse = np.unique(np.concatenate(values), return_inverse=True)
        inverse = inverse.ravel()
        pooled_pos = np.bincount(inverse, np.concatenate(pos), minlength=merged.size)
        pooled_neg = np.bincount(inverse, np.concatenate(neg), minlength=merged.size)
        auc = histogram_auc(pooled_pos, pooled_neg)
        return auc, (0.0 if auc is not None else None)
    pooled_pos = np.zeros(stats[0].bins, np.int64)
    pooled_neg = np.zeros(stats[0].bins, np.int64)
    for s in stats:
        flip = s.negated_by_rule(negate_rule)
        pooled_pos += s.hist_forged[::-1] if flip else s.hist_forged
        pooled_neg += s.hist_pristine[::-1] if flip else s.hist_pristine
    return histogram_auc(pooled_pos, pooled_neg), histogram_auc_bound(pooled_pos, pooled_neg)


def _confusion_at_all_thresholds(hist_pos: np.ndarray, hist_neg: np.ndarray):
    """TP, FP, FN at the thresholds k / bins for k = 0..bins (predicted forged iff bin >= k)."""
    zero = np.zeros(1, np.int64)
    tp = np.concatenate([np.cumsum(hist_pos[::-1])[::-1], zero])
    fp = np.concatenate([np.cumsum(hist_neg[::-1])[::-1], zero])
    fn = int(hist_pos.sum()) - tp
    return tp.astype(np.float64), fp.astype(np.float64), fn.astype(np.float64)


def _safe_ratio(num, den):
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(den), where=den > 0)


def _threshold_metrics(hist_pos: np.ndarray, hist_neg: np.ndarray):
    """(F1 at 0.5, IoU at 0.5, best F1, its threshold) for one orientation of a prediction."""
    bins = hist_pos.shape[0]
    tp, fp, fn = _confusion_at_all_thresholds(hist_pos, hist_neg)
    f1 = _safe_ratio(2 * tp, 2 * tp + fp + fn)
    half = bins // 2
    best = int(np.argmax(f1))
    iou_half = _safe_ratio(tp[half], tp[half] + fp[half] + fn[half])
    return float(f1[half]), float(iou_half), float(f1[best]), best / bins


def image_metrics(stats: ImageStats, *, negate_rule: bool = True, invert: bool = False) -> dict:
    """One image's metrics, a report row.

    ``auc`` is None when the mask has no forged or no pristine pixel; ``negated`` says whether
    the negation rule flipped the prediction for the AUCs (its own, when defined, and its share
    of the pooled one; never for F1 or IoU). The AUC is exact when the statistics hold the
    distinct values (see :func:`_image_auc` otherwise). The F1/IoU entries are None for a
    mask without forged pixels. With ``invert`` each of F1@0.5, IoU@0.5 and best F1 is the max
    over p and 1 - p, and ``inverted`` says whether 1 - p won at the fixed threshold; the best
    threshold is then reported on the flipped map's scale. Flipping reverses the bins, so the
    flipped map counts a pixel forged when 1 - p > t: the edge changes side, and p == 0.5
    exactly is forged in the original orientation and pristine in the flipped one.
    """
    pos, neg = stats.hist_forged, stats.hist_pristine
    negated = stats.negated_by_rule(negate_rule)
    auc, _ = _image_auc(stats, negated)
    row = {
        "name": stats.name,
        "height": stats.height,
        "width": stats.width,
        "forged_fraction": stats.forged_fraction,
        "image_score_mean": stats.score_mean,
        "image_score_max": stats.score_max,
        "auc": auc,
        "negated": negated,
        "f1_at_0.5": None,
        "iou_at_0.5": None,
        "f1_best": None,
        "best_threshold": None,
        "inverted": False,
    }
    if stats.n_forged == 0:
        return row
    f1_half, iou_half, f1_best, t_best = _threshold_metrics(pos, neg)
    if invert:
        inv_f1_half, inv_iou_half, inv_f1_best, inv_t_best = _threshold_metrics(pos[::-1], neg[::-1])
        if inv_f1_half > f1_half:
            f1_half, iou_half, row["inverted"] = inv_f1_half, inv_iou_half, True
        if inv_f1_best > f1_best:
            f1_best, t_best = inv_f1_best, inv_t_best
    row.update({"f1_at_0.5": f1_half, "iou_at_0.5": iou_half, "f1_best": f1_best, "best_threshold": t_best})
    return row


# --------------------------------------------------------------------------------------------
# Image level
# --------------------------------------------------------------------------------------------
def _scores_and_labels(scores, labels):
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel() != 0
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    return scores, labels


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Exact ROC AUC (Mann-Whitney U with tie-averaged ranks), label 1 = positive.

    None when either class is empty.
    """
    scores, labels = _scores_and_labels(scores, labels)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    run_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    run_ends = np.r_[run_starts[1:], scores.size]
    ranks = np.empty(scores.size, np.float64)
    ranks[order] = np.repeat((run_starts + run_ends + 1) / 2.0, run_ends - run_starts)  # 1-based
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def balanced_accuracy(scores: Sequence[float], labels: Sequence[int], threshold: float) -> float | None:
    """(TPR + TNR) / 2 with an image predicted forged when ``score >= threshold``.

    None when either class is empty.
    """
    scores, labels = _scores_and_labels(scores, labels)
    if labels.all() or not labels.any():
        return None
    predicted = scores >= threshold
    return float((predicted[labels].mean() + (~predicted[~labels]).mean()) / 2)


def best_balanced_accuracy(scores: Sequence[float], labels: Sequence[int]) -> tuple[float | None, float | None]:
    """The best balanced accuracy over all thresholds (an oracle) and the threshold reaching it."""
    scores, labels = _scores_and_labels(scores, labels)
    if labels.all() or not labels.any():
        return None, None
    thresholds = np.unique(np.r_[scores, np.inf])  # inf: nothing predicted forged
    pos, neg = np.sort(scores[labels]), np.sort(scores[~labels])
    tpr = 1.0 - np.searchsorted(pos, thresholds, side="left") / pos.size
    tnr = np.searchsorted(neg, thresholds, side="left") / neg.size
    values = (tpr + tnr) / 2
    best = int(np.argmax(values))
    return float(values[best]), float(thresholds[best])


# --------------------------------------------------------------------------------------------
# Set level
# --------------------------------------------------------------------------------------------
def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize(stats: Sequence[ImageStats], *, negate_rule: bool = True, invert: bool = False,
              authentic: Sequence[ImageStats] | Sequence[float] | None = None,
              image_score: str = "mean") -> dict:
    """Set-level metrics over images with ground truth, and authentic images for the image level.

    Args:
      stats: per-image statistics of the images that have a ground-truth mask.
      negate_rule: the paper's rule, negate an image's prediction for the AUC when its ground
        truth is more than 50 % forged; the pooled AUC flips exactly the same images, listed
        per metric under ``negated_images``.
      invert: per-image max over p and 1 - p for F1 and IoU.
      authentic: statistics (or bare image scores) of authentic images. Given, the summary adds
        ``image_auc`` and balanced accuracies, the forged images' scores being the positives.
      image_score: "mean" (the paper's, mean likelihood) or "max" likelihood as image score.

    Returns a JSON-ready dict; undefined values are None. ``auc_error_bound`` gives, per AUC,
    the most it can differ from the exact value: 0 (exact) unless older statistics without the
    distinct values were loaded. Balanced accuracy is reported at the
    fixed image-score threshold 0.5 and at the best threshold (an oracle, with the threshold).
    """
    if image_score not in ("mean", "max"):
        raise ValueError(f"image_score must be 'mean' or 'max', got {image_score!r}")
    bin_counts = {s.bins for s in stats} | {a.bins for a in authentic or () if isinstance(a, ImageStats)}
    if len(bin_counts) > 1:
        raise ValueError(f"statistics were stored with different bin counts: {sorted(bin_counts)}")
    rows = [image_metrics(s, negate_rule=negate_rule, invert=invert) for s in stats]
    pooled, pooled_bound = pooled_auc(stats, negate_rule)
    per_image_bounds = [_image_auc(s, r["negated"])[1] for s, r in zip(stats, rows)]

    summary = {
        "n_images": len(stats),
        "pixel_auc_mean": _mean(r["auc"] for r in rows),
        "pixel_auc_pooled": pooled,
        "f1_at_0.5_mean": _mean(r["f1_at_0.5"] for r in rows),
        "f1_best_mean": _mean(r["f1_best"] for r in rows),
        "iou_at_0.5_mean": _mean(r["iou_at_0.5"] for r in rows),
        "n_auc_scored": sum(r["auc"] is not None for r in rows),
        "n_auc_undefined": sum(r["auc"] is None for r in rows),
        "n_empty_masks": sum(s.n_forged == 0 for s in stats),
        "n_f1_scored": sum(r["f1_at_0.5"] is not None for r in rows),
        "negate_rule": bool(negate_rule),
        "n_negated": sum(r["negated"] for r in rows),
        # The rule's one decision per image, as each metric applied it: the per-image mean
        # only holds images with an AUC, the pooled AUC every image flipped.
        "negated_images": {
            "pixel_auc_mean": [r["name"] for r in rows if r["negated"] and r["auc"] is not None],
            "pixel_auc_pooled": [r["name"] for r in rows if r["negated"]],
        },
        "invert_predictions": bool(invert),
        "n_inverted_at_0.5": sum(r["inverted"] for r in rows),
        "bins": next(iter(bin_counts)) if bin_counts else None,
        "auc_error_bound": {
            "pixel_auc_mean": _mean(per_image_bounds),  # the mean of bounds bounds the mean's error
            "pixel_auc_pooled": pooled_bound,
            "image_auc": 0.0 if authentic is not None else None,
        },
        "threshold_rule": "a pixel is predicted forged when p >= threshold",
        "auc_policy": "every AUC is exact (Mann-Whitney over the distinct likelihoods, ties counting half) "
                      "unless auc_error_bound says otherwise; per-image AUC left out (never scored 0) when a "
                      "mask has no forged or no pristine pixel; the pooled AUC merges every image's pixels, "
                      "each image negated or not as negated_images says",
        "f1_policy": "masks without forged pixels are left out of the per-image F1 and IoU means",
    }
    if authentic is not None:
        def score_of(item):
            if isinstance(item, ImageStats):
                return item.score_mean if image_score == "mean" else item.score_max
            return float(item)

        forged_scores = [score_of(s) for s in stats]
        authentic_scores = [score_of(a) for a in authentic]
        scores = forged_scores + authentic_scores
        labels = [1] * len(forged_scores) + [0] * len(authentic_scores)
        best_accuracy, best_threshold = best_balanced_accuracy(scores, labels)
        summary.update({
            "n_authentic": len(authentic_scores),
            "image_score": image_score,
            "image_auc": roc_auc(scores, labels),
            "image_balanced_accuracy_at_0.5": balanced_accuracy(scores, labels, FIXED_THRESHOLD),
            "image_balanced_accuracy_best": best_accuracy,
            "image_best_threshold": best_threshold,
            "authentic_pixel_policy": "authentic images enter the image-level metrics only",
        })
    return summary


# --------------------------------------------------------------------------------------------
# Storage: .npz of plain arrays, loaded without pickle
# --------------------------------------------------------------------------------------------
def save_stats(path: str | Path, stats: Sequence[ImageStats], *, bins: int = DEFAULT_BINS) -> None:
    """Writes per-image statistics to ``path`` (.npz of plain arrays); ``bins`` only shapes an
    empty file."""
    if stats:
        bins = stats[0].bins
        if any(s.bins != bins for s in stats):
            raise ValueError(f"{path}: cannot store statistics with different bin counts in one file")
    empty_hist = np.zeros((0, bins), np.int64)

    def ragged(field, dtype):
        parts = [getattr(s, field) for s in stats if s.exact]
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    np.savez_compressed(
        path,
        names=np.array([s.name for s in stats], dtype=np.str_).reshape(-1),
        hist_forged=np.stack([s.hist_forged for s in stats]) if stats else empty_hist,
        hist_pristine=np.stack([s.hist_pristine for s in stats]) if stats else empty_hist,
        score_mean=np.array([s.score_mean for s in stats], np.float64),
        score_max=np.array([s.score_max for s in stats], np.float64),
        height=np.array([s.height for s in stats], np.int64),
        width=np.array([s.width for s in stats], np.int64),
        has_values=np.array([s.exact for s in stats], np.bool_),
        value_offsets=np.cumsum([0] + [s.values.size if s.exact else 0 for s in stats]).astype(np.int64),
        values=ragged("values", np.float64),
        value_forged=ragged("value_forged", np.int64),
        value_pristine=ragged("value_pristine", np.int64),
    )


def load_stats(path: str | Path) -> list[ImageStats]:
    """Reads statistics written by :func:`save_stats`."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # np.load would call any other file "pickled data"
            raise ValueError(f"{path}: not a statistics file written by save_stats (not an .npz archive)")
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in _STATS_KEYS if k not in data.files]
        if missing:
            raise ValueError(f"{path}: not a statistics file written by save_stats (missing {missing})")
        arrays = {k: data[k] for k in _STATS_KEYS}
        ragged = {k: data[k] for k in _VALUE_KEYS} if all(k in data.files for k in _VALUE_KEYS) else None
    n = arrays["names"].shape[0] if arrays["names"].ndim == 1 else -1
    hist_shapes = {arrays[k].shape for k in ("hist_forged", "hist_pristine")}
    if (n < 0 or any(arrays[k].shape != (n,) for k in _STATS_KEYS if not k.startswith("hist"))
            or len(hist_shapes) != 1 or len(next(iter(hist_shapes))) != 2 or next(iter(hist_shapes))[0] != n):
        raise ValueError(f"{path}: its arrays do not agree in length or shape ("
                         + ", ".join(f"{k} {arrays[k].shape}" for k in _STATS_KEYS) + ")")
    if ragged is not None:
        offsets, flags = ragged["value_offsets"], ragged["has_values"]
        shortest = min(len(ragged[k]) for k in ("values", "value_forged", "value_pristine"))
        if offsets.shape != (n + 1,) or flags.shape != (n,) or int(offsets[-1]) > shortest:
            raise ValueError(f"{path}: its exact-value arrays do not agree with its {n} images")

    def exact(i):
        if ragged is None or not ragged["has_values"][i]:
            return {}
        lo, hi = ragged["value_offsets"][i], ragged["value_offsets"][i + 1]
        return {k: ragged[k][lo:hi].astype(np.float64 if k == "values" else np.int64)
                for k in ("values", "value_forged", "value_pristine")}

    return [
        ImageStats(
            name=str(arrays["names"][i]),
            hist_forged=arrays["hist_forged"][i].astype(np.int64),
            hist_pristine=arrays["hist_pristine"][i].astype(np.int64),
            score_mean=float(arrays["score_mean"][i]),
            score_max=float(arrays["score_max"][i]),
            height=int(arrays["height"][i]),
            width=int(arrays["width"][i]),
            **exact(i),
        )
        for i in range(arrays["names"].shape[0])
    ]
