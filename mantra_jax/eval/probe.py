"""Do a network's features carry manipulation traces? A probe on content-neutral forgeries.

A forgery detector that follows traces must tell a region of a photo processed differently from
the rest, even when nothing in the content changed. The probe measures exactly that, before any
long training:

1. **Content-neutral local manipulations** (`local_manipulation`): one random region (the
   training masks of `mantra_jax.data.masks`) of a pristine photo is replaced by the same pixels
   after one processing step (`OPS`: resampled, re-compressed on a shifted JPEG grid over a JPEG
   photo, noised, blurred, contrast-changed). Object, texture and position carry no information
   about the region: only the trace does.
2. **Features** of any extractor (uint8 RGB -> H x W x C float32): the fixed first layer (SRM and
   Bayar), Featex at random initialisation, Featex after IMC or end-to-end training.
3. **A fixed anomaly readout** (`deviation_descriptors`): for each channel, how far its local mean
   over a `window` lies from the image's mean (a Z-score, signed and squared) and the log ratio of
   local to global energy: the statistics the anomaly network computes, without its learned
   parts.
4. **A linear probe** per operation: a per-pixel logistic regression (`fit_logistic`) on those
   descriptors, fitted on the images of some photos and scored (pixel AUC) on other photos.

A high AUC says the features separate the manipulated region by its trace under a simple
readout; an AUC near 0.5 says that this trace is invisible to them, however long the anomaly
network trains. numpy/OpenCV for the data and the readout; the extractors may use JAX.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import cv2
import numpy as np

from mantra_jax.data import masks as masks_lib
from mantra_jax.metrics import pixel

OPS = ("resample", "jpeg_grid", "noise", "blur", "contrast")

Extractor = Callable[[np.ndarray], np.ndarray]


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to JPEG-encode an image")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def apply_op(op: str, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The whole photo after one processing step `op` (of OPS); parameters drawn from `rng`.

    Mild settings, of the strength a forger's post-processing leaves: resampling by 0.6-0.85 and
    back, JPEG quality 70-90 on a grid shifted by 1-7 pixels in each direction, Gaussian noise of
    standard deviation 2-5 grey levels, Gaussian blur of sigma 0.5-1.0, gamma 0.7-0.85 or 1.2-1.4.
    """
    h, w = rgb.shape[:2]
    if op == "resample":
        f = rng.uniform(0.6, 0.85)
        small = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if op == "jpeg_grid":
        dy, dx = (int(v) for v in rng.integers(1, 8, size=2))
        shifted = np.pad(rgb, ((dy, 0), (dx, 0), (0, 0)), mode="symmetric")
        return _jpeg(shifted, int(rng.integers(70, 91)))[dy:, dx:]
    if op == "noise":
        noise = rng.normal(0.0, rng.uniform(2.0, 5.0), rgb.shape)
        return np.clip(np.rint(rgb + noise), 0, 255).astype(np.uint8)
    if op == "blur":
        return cv2.GaussianBlur(rgb, (0, 0), rng.uniform(0.5, 1.0), borderType=cv2.BORDER_REFLECT)
    if op == "contrast":
        gamma = rng.uniform(0.7, 0.85) if rng.random() < 0.5 else rng.uniform(1.2, 1.4)
        lut = np.clip(np.rint(255.0 * (np.arange(256) / 255.0) ** gamma), 0, 255).astype(np.uint8)
        return lut[rgb]
    raise ValueError(f"unknown probe operation {op!r}; expected one of {OPS}")


def local_manipulation(rgb: np.ndarray, op: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask): `rgb` with one random region replaced by its own pixels after `op`.

    For "jpeg_grid" the whole photo is first JPEG-compressed on its own grid (quality 75-95, as a
    camera would), so that the region differs by its misaligned second compression, not by being
    the only compressed part. The region is a training mask (`masks.random_mask`), pasted with a
    hard edge; the mask is uint8 {0, 1}.
    """
    rgb = np.ascontiguousarray(rgb, np.uint8)
    h, w = rgb.shape[:2]
    if op == "jpeg_grid":
        rgb = _jpeg(rgb, int(rng.integers(75, 96)))
    mask = masks_lib.random_mask(rng, h, w)
    processed = apply_op(op, rgb, rng)
    return np.where(mask[..., None] > 0, processed, rgb), mask


class ProbeImage(NamedTuple):
    image: np.ndarray  # uint8 H x W x 3
    mask: np.ndarray  # uint8 H x W in {0, 1}
    op: str
    photo: int  # index of the source photo (fit and test never share one)


def probe_set(photos: Sequence[np.ndarray], *, seed: int, ops: Sequence[str] = OPS) -> list[ProbeImage]:
    """One local manipulation of every photo by every operation, deterministic in `seed`."""
    out = []
    for p, photo in enumerate(photos):
        for o, op in enumerate(ops):
            rng = np.random.default_rng(np.random.SeedSequence([seed, p, o]))
            image, mask = local_manipulation(photo, op, rng)
            out.append(ProbeImage(image, mask, op, p))
    return out


def _box(x: np.ndarray, window: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (window, window), borderType=cv2.BORDER_REFLECT)


def deviation_descriptors(feat_HxWxC: np.ndarray, window: int = 15, with_energy: bool = True) -> np.ndarray:
    """H x W x 3C: per channel, the local mean's Z-score against the image (signed and squared),
    and log(local energy / image energy), local statistics over `window` x `window`. Without
    `with_energy`, H x W x 2C: the Z-scores alone, the statistic the anomaly network computes."""
    f = np.asarray(feat_HxWxC, np.float32)
    h, w, c = f.shape
    mean = f.reshape(-1, c).mean(0)
    std = f.reshape(-1, c).std(0) + 1e-6
    energy = (f * f).reshape(-1, c).mean(0) + 1e-8
    local_mean = np.stack([_box(f[..., i], window) for i in range(c)], -1)
    local_energy = np.stack([_box(f[..., i] * f[..., i], window) for i in range(c)], -1)
    z = (local_mean - mean) / std
    if not with_energy:
        return np.concatenate([z, z * z], -1)
    ratio = np.log(np.maximum(local_energy, 0.0) + 1e-8) - np.log(energy)
    return np.concatenate([z, z * z, ratio], -1)


def fit_logistic(x_NxD: np.ndarray, y_N: np.ndarray, *, l2: float = 1e-3, iterations: int = 25):
    """Weights (D + 1,) of a logistic regression by Newton's method (IRLS), with an L2 penalty
    on all but the bias; the two classes weighted equally. Inputs are standardised first:
    returns (weights, mean, scale) for `logistic_score`."""
    x = np.asarray(x_NxD, np.float64)
    y = np.asarray(y_N, np.float64)
    if len(np.unique(y)) < 2:
        raise ValueError("fit_logistic needs both classes")
    mean, scale = x.mean(0), x.std(0) + 1e-8
    z = np.concatenate([(x - mean) / scale, np.ones((len(x), 1))], 1)
    balance = np.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], l2 * len(x))
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -30, 30)))
        grad = z.T @ (balance * (p - y)) + penalty * w
        hess = (z * (balance * p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w, mean, scale


def logistic_score(x_NxD: np.ndarray, fitted) -> np.ndarray:
    w, mean, scale = fitted
    z = (np.asarray(x_NxD, np.float64) - mean) / scale
    return z @ w[:-1] + w[-1]


def run_probe(extractor: Extractor, fit: Sequence[ProbeImage], test: Sequence[ProbeImage], *,
              window: int = 15, pixels_per_image: int = 2000, seed: int = 0, with_energy: bool = True) -> dict[str, float]:
    """Pixel AUC of a linear probe per operation on `test`, and their mean ("all").

    One probe per operation (a trace the features carry may move a statistic up or down: one
    readout for all of them would measure the readout, not the features), fitted on
    `pixels_per_image` random pixels of each `fit` image of that operation (half inside the region
    where it has that many) and scored on every pixel of the test images of that operation
    (pooled exact AUC, ties counting half). Without `with_energy`, the probe reads the Z-scores
    alone (`deviation_descriptors`)."""
    rng = np.random.default_rng(seed)
    descriptors = {}

    def described(sample):
        key = id(sample)
        if key not in descriptors:
            d = deviation_descriptors(extractor(sample.image), window, with_energy)
            descriptors[key] = d.reshape(-1, d.shape[-1])
        return descriptors[key]

    result = {}
    for op in sorted({s.op for s in test}, key=lambda o: OPS.index(o) if o in OPS else len(OPS)):
        xs, ys = [], []
        for sample in (s for s in fit if s.op == op):
            flat, labels = described(sample), sample.mask.reshape(-1)
            inside, outside = np.flatnonzero(labels), np.flatnonzero(labels == 0)
            k = pixels_per_image // 2
            pick = np.concatenate([rng.choice(inside, min(k, len(inside)), replace=False),
                                   rng.choice(outside, min(k, len(outside)), replace=False)])
            xs.append(flat[pick])
            ys.append(labels[pick])
        if not xs:
            raise ValueError(f"no fit image of operation {op!r}")
        fitted = fit_logistic(np.concatenate(xs), np.concatenate(ys))
        tests = [s for s in test if s.op == op]
        scores = np.concatenate([logistic_score(described(s), fitted) for s in tests])
        result[op] = pixel.roc_auc(scores, np.concatenate([s.mask.reshape(-1) for s in tests]))
        for s in tests:
            descriptors.pop(id(s), None)
    result["all"] = float(np.mean([v for k, v in result.items()]))
    return result


def map_auc(score_map: Callable[[np.ndarray], np.ndarray], test: Sequence[ProbeImage]) -> dict[str, float]:
    """Pooled pixel AUC of a ready-made map (a baseline or a trained model's probabilities), per
    operation, and their mean ("all"), on the same test images as `run_probe`."""
    scores: dict[str, list] = {}
    labels: dict[str, list] = {}
    for sample in test:
        scores.setdefault(sample.op, []).append(np.asarray(score_map(sample.image), np.float64).reshape(-1))
        labels.setdefault(sample.op, []).append(sample.mask.reshape(-1))
    result = {op: pixel.roc_auc(np.concatenate(scores[op]), np.concatenate(labels[op])) for op in scores}
    result["all"] = float(np.mean(list(result.values())))
    return result
