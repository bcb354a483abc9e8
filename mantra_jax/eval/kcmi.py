"""The paper's KCMI test of Featex features: camera-model identification by nearest neighbours.

Protocol (ManTra-Net, Sec. 4.1): every photo of a camera-model identification set becomes one
feature vector, the Featex features averaged over the centre 512 x 512 of the photo; each camera's
photos are split in halves; a K = 7 nearest-neighbour classifier fitted on one half names the
camera of every photo of the other half; the score is its accuracy. Features that keep camera
traces (demosaicing, in-camera processing, JPEG tables) separate the models without any training.

Conventions where the paper is silent:

* layout: one sub-folder of the data folder per camera model (its name is the label); a camera's
  photos may sit in nested folders below it; image files directly in the data folder belong to no
  camera and are ignored (listed in the result);
* centre crop: the centre ``crop`` x ``crop`` window (offsets rounded down); a photo smaller than
  ``crop`` in a side keeps that side whole (a 400 x 800 photo gives its centre 400 x 512);
* halves: each camera's photos in a seeded random order, the first floor(n / 2) fit the
  classifier and the other ceil(n / 2) are scored, so every camera has at least one photo on each
  side (a camera needs two photos);
* distance: "cosine" (the default) on the L2-normalised mean features, or "euclidean" on the raw
  mean features; K larger than the fitted half is cut to its size;
* ties: neighbours at equal distance are taken in fitting order (camera, then file order); a vote
  tied between cameras goes to the tied camera whose nearest member is closest.

Unreadable photos are skipped and listed; the requirements (two cameras, two photos each) are
checked again after skipping.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from mantra_jax import provenance
from mantra_jax.errors import UserError
from mantra_jax.data import images
from mantra_jax.metrics.plots import plot_confusion

FeatureFn = Callable[[np.ndarray], np.ndarray]  # uint8 H x W x 3 RGB -> (C,), as Predictor.features(pooled=True)
Progress = Callable[[int, int], None]
METRICS = ("cosine", "euclidean")
DEFAULT_K = 7
DEFAULT_CROP = 512

log = logging.getLogger(__name__)


class KcmiDataError(UserError, ValueError):
    """The camera folder cannot support the test; the message names the folder and the problem."""


@dataclasses.dataclass(frozen=True)
class CameraSet:
    """The photos of a camera-model folder: ``paths[i]`` was taken by ``cameras[labels[i]]``."""

    root: Path
    cameras: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: np.ndarray  # int64 (n,)
    loose_files: tuple[str, ...] = ()  # image files directly in root, not assigned to a camera


def list_camera_images(folder) -> CameraSet:
    """Collects the photos of each camera sub-folder of ``folder`` (sorted by name)."""
    root = Path(folder)
    if not root.exists():
        raise KcmiDataError(f"{root}: the camera folder does not exist")
    if not root.is_dir():
        raise KcmiDataError(f"{root}: not a folder (expected one sub-folder of photos per camera model)")
    loose = tuple(p.name for p in images.list_images(root) if p.parent == root)
    cameras, paths, labels = [], [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = images.list_images(sub)
        if not files:
            continue
        label = len(cameras)
        cameras.append(sub.name)
        paths.extend(files)
        labels.extend([label] * len(files))
    camera_set = CameraSet(root, tuple(cameras), tuple(paths), np.asarray(labels, np.int64), loose)
    check_camera_set(camera_set)
    if loose:
        log.warning("%s: %d image file(s) directly in the folder belong to no camera and are ignored",
                    root, len(loose))
    return camera_set


def check_camera_set(camera_set: CameraSet, what: str = "photos") -> None:
    """Two cameras at least, each with two photos at least (one per half)."""
    root = camera_set.root
    if len(camera_set.cameras) == 0:
        extra = f" ({len(camera_set.loose_files)} image files lie directly in it)" if camera_set.loose_files else ""
        raise KcmiDataError(f"{root}: no camera sub-folder with {what}; expected one sub-folder of photos per "
                            f"camera model{extra}")
    if len(camera_set.cameras) < 2:
        raise KcmiDataError(f"{root}: only one camera model ({camera_set.cameras[0]!r}) has {what}; the test needs "
                            "two or more camera sub-folders")
    counts = np.bincount(camera_set.labels, minlength=len(camera_set.cameras))
    few = [f"{camera_set.cameras[c]!r} ({counts[c]})" for c in range(len(counts)) if counts[c] < 2]
    if few:
        raise KcmiDataError(f"{root}: camera sub-folder(s) with fewer than two {what}, so no photo is left for one "
                            f"of the halves: {', '.join(few)}")


def centre_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` window; a side shorter than ``size`` is kept whole."""
    height, width = rgb.shape[:2]
    crop_h, crop_w = min(height, size), min(width, size)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return rgb[top:top + crop_h, left:left + crop_w]


def extract_features(feature_fn: FeatureFn, camera_set: CameraSet, *, max_pixels: int = images.DEFAULT_MAX_PIXELS,
                     progress: Optional[Progress] = None) -> tuple[CameraSet, np.ndarray, list[str]]:
    """Features of every readable photo: (the readable subset, features (n, C), skipped problems)."""
    kept, features, skipped = [], [], []
    total = len(camera_set.paths)
    if progress is not None:
        progress(0, total)  # starts the clock before the first photo
    for i, path in enumerate(camera_set.paths):
        try:
            rgb = images.read_rgb(path, max_pixels=max_pixels)
        except images.ImageReadError as e:
            skipped.append(str(e))
            log.warning("skipped %s", e)
        else:
            vector = np.asarray(feature_fn(rgb), np.float64).ravel()
            if not np.all(np.isfinite(vector)):
                raise ValueError(f"{path}: the feature vector holds NaN or infinite values")
            features.append(vector)
            kept.append(i)
        if progress is not None:
            progress(i + 1, total)
    subset = dataclasses.replace(camera_set, paths=tuple(camera_set.paths[i] for i in kept),
                                 labels=camera_set.labels[kept])
    if not features:
        raise KcmiDataError(f"{camera_set.root}: none of the {total} photos could be read")
    check_camera_set(subset, what="readable photos")
    return subset, np.stack(features), skipped


def split_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, test) indices: per camera a seeded order, the first floor(n / 2) fit, the rest test.

    The order of a camera depends on the seed, the camera's label and its photo count only.
    """
    labels = np.asarray(labels)
    fit, test = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng = np.random.default_rng(np.random.SeedSequence([seed, int(label), members.size]))
        order = members[rng.permutation(members.size)]
        half = members.size // 2
        fit.extend(order[:half])
        test.extend(order[half:])
    return np.sort(np.asarray(fit, np.int64)), np.sort(np.asarray(test, np.int64))


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def pairwise_distances(query: np.ndarray, reference: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """(n_query, n_reference) distances: 1 - cosine similarity, or the Euclidean distance."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    query, reference = np.asarray(query, np.float64), np.asarray(reference, np.float64)
    if metric == "cosine":
        return 1.0 - l2_normalize(query) @ l2_normalize(reference).T
    squared = (np.sum(query ** 2, axis=1)[:, None] + np.sum(reference ** 2, axis=1)[None, :]
               - 2.0 * query @ reference.T)
    return np.sqrt(np.maximum(squared, 0.0))


def knn_predict(fit_features: np.ndarray, fit_labels: np.ndarray, query_features: np.ndarray, *,
                k: int = DEFAULT_K, metric: str = "cosine") -> np.ndarray:
    """Majority vote of the k nearest fitted samples (ties: see the module docstring)."""
    fit_labels = np.asarray(fit_labels, np.int64)
    if len(fit_labels) == 0:
        raise ValueError("knn_predict: no fitted sample")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(int(k), len(fit_labels))
    distances = pairwise_distances(query_features, fit_features, metric)
    # A stable sort keeps equal distances in fitting order, which the tie rule promises.
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
    neighbour_labels = fit_labels[nearest]  # (n_query, k), nearest first
    n_classes = int(fit_labels.max()) + 1
    votes = np.zeros((len(nearest), n_classes), np.int64)
    np.add.at(votes, (np.arange(len(nearest))[:, None], neighbour_labels), 1)
    tied = votes == votes.max(axis=1, keepdims=True)
    # The first neighbour (nearest first) whose camera is among the tied winners.
    first_tied = np.argmax(np.take_along_axis(tied, neighbour_labels, axis=1), axis=1)
    return neighbour_labels[np.arange(len(nearest)), first_tied]


def evaluate_features(features: np.ndarray, labels: np.ndarray, cameras: Sequence[str], *, k: int = DEFAULT_K,
                      seed: int = 0, metric: str = "cosine") -> dict:
    """The KCMI score of precomputed features: halves, k-NN, accuracy overall and per camera."""
    labels = np.asarray(labels, np.int64)
    n_cameras = len(cameras)
    fit, test = split_halves(labels, seed)
    predicted = knn_predict(features[fit], labels[fit], features[test], k=k, metric=metric)
    truth = labels[test]
    confusion = np.zeros((n_cameras, n_cameras), np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    per_camera = {}
    for c, name in enumerate(cameras):
        scored = truth == c
        per_camera[name] = {
            "n_images": int(np.sum(labels == c)),
            "n_fit": int(np.sum(labels[fit] == c)),
            "n_test": int(scored.sum()),
            "accuracy": float(np.mean(predicted[scored] == c)),
        }
    test_counts = np.bincount(truth, minlength=n_cameras)
    return {
        "accuracy": float(np.mean(predicted == truth)),
        "balanced_accuracy": float(np.mean([r["accuracy"] for r in per_camera.values()])),
        "chance_accuracy": 1.0 / n_cameras,
        "majority_accuracy": float(test_counts.max() / test_counts.sum()),
        "k": int(k),
        "k_used": min(int(k), len(fit)),
        "metric": metric,
        "seed": int(seed),
        "n_cameras": n_cameras,
        "n_fit": int(len(fit)),
        "n_test": int(len(test)),
        "cameras": list(cameras),
        "per_camera": per_camera,
        "confusion": confusion.tolist(),
        "test_indices": test.tolist(),
        "predicted": predicted.tolist(),
    }


def run_kcmi(feature_fn: FeatureFn, folder, *, k: int = DEFAULT_K, seed: int = 0, metric: str = "cosine",
             progress: Optional[Progress] = None) -> dict:
    """The whole test on a camera folder; the result also names the photos scored and skipped."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    camera_set = list_camera_images(folder)
    camera_set, features, skipped = extract_features(feature_fn, camera_set, progress=progress)
    result = evaluate_features(features, camera_set.labels, camera_set.cameras, k=k, seed=seed, metric=metric)
    root = camera_set.root
    result["folder"] = str(root)
    result["images"] = [p.relative_to(root).as_posix() for p in camera_set.paths]
    result["skipped"] = skipped
    result["loose_files_ignored"] = list(camera_set.loose_files)
    result["feature_dim"] = int(features.shape[1])
    return result


def write_report(out_dir, result: dict, *, run: Optional[dict] = None) -> Path:
    """kcmi_report.json (everything), kcmi_report.md (tables) and kcmi_confusion.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = dict(result, run=dict(run or {}))
    path = out_dir / "kcmi_report.json"
    path.write_text(json.dumps(report, indent=1))
    lines = [
        f"# KCMI camera-model identification ({result['k']}-NN, {result['metric']} distance)", "",
        f"accuracy **{100 * result['accuracy']:.1f} %** on {result['n_test']} photos "
        f"(fitted on {result['n_fit']}; {result['n_cameras']} cameras, "
        f"chance {100 * result['chance_accuracy']:.1f} %, majority {100 * result['majority_accuracy']:.1f} %, "
        f"balanced accuracy {100 * result['balanced_accuracy']:.1f} %)",
        "", "| camera | photos | fitted | scored | accuracy |", "|---|---|---|---|---|"]
    for name, r in result["per_camera"].items():
        lines.append(f"| {name} | {r['n_images']} | {r['n_fit']} | {r['n_test']} | {100 * r['accuracy']:.1f} |")
    if result.get("skipped"):
        lines += ["", f"{len(result['skipped'])} unreadable photo(s) skipped (see kcmi_report.json)."]
    if run:
        lines += [part for line in provenance.markdown_lines(run) for part in ("", line)]
    (out_dir / "kcmi_report.md").write_text("\n".join(lines) + "\n")
    plot_confusion(np.asarray(result["confusion"], np.float64), list(result["cameras"]), out_dir / "kcmi_confusion.png",
                   title=f"KCMI {result['k']}-NN: accuracy {100 * result['accuracy']:.1f} %")
    return path


def evaluate_checkpoint(checkpoint, data_dir, out_dir, *, k: int = DEFAULT_K, crop: int = DEFAULT_CROP, seed: int = 0,
                        metric: str = "cosine", step: provenance.StepChoice = provenance.DEFAULT_STEP,
                        precision: str = "float32", progress: bool = True) -> dict:
    """The test of a checkpoint's Featex (IMC or ManTra-Net) on a camera folder: checks the folder,
    loads the checkpoint, runs the test and writes the report (its "run" entry: the step scored and
    why, the model configuration, the command line, the crop and precision)."""
    from mantra_jax.infer.predict import Predictor  # noqa: PLC0415  (JAX and Orbax only when a model is run)
    from mantra_jax.metrics.progress import ProgressLine  # noqa: PLC0415

    list_camera_images(data_dir)  # a bad folder fails before the model is loaded
    predictor = Predictor.from_checkpoint(checkpoint, step=step, dtype=precision, features_only=True)
    bar = None

    def progress_fn(done, total):
        nonlocal bar
        bar = bar or ProgressLine(total, "kcmi features")
        bar.update(done)

    result = run_kcmi(lambda rgb: predictor.features(centre_crop(rgb, crop), pooled=True), data_dir, k=k, seed=seed,
                      metric=metric, progress=progress_fn if progress else None)
    result["run"] = dict(predictor.provenance, crop=crop, precision=precision)
    write_report(out_dir, result, run=result["run"])
    return result
