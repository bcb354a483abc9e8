"""Scores a forgery-localisation predictor on a benchmark folder (the command: experiments/evaluate.py).

`run_evaluation` runs any predictor over image/mask pairs (and authentic images) and writes
OUT/report.json, report.md, per_image.csv, panels/ (best and worst images) and the per-image
statistics (stats.npz, authentic_stats.npz) from which `recompute_from_stats` recomputes every
metric variant without a model; `evaluate_checkpoint` pairs the folders and scores a checkpoint.
OUT/index.html (mantra_jax/metrics/pages.py) shows the headline numbers and the best/worst panels
at the top, then one row per scored image (photo, ground truth, overlay, mask, image score, AUC,
F1 at 0.5; the overlay and mask as small images under maps/, never full size) and the skipped
files with their reasons; it is rewritten every PAGE_INTERVAL_S seconds while the run goes on.
Metric conventions: mantra_jax/eval/pixel_metrics.py; folder layouts (presets):
mantra_jax/eval/datasets.py. Images read as their first frame (animated GIF, multi-page TIFF) are
listed under `notes` in report.json and in the note column of per_image.csv.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from absl import logging

from mantra_jax import provenance
from mantra_jax.data import images as image_io
from mantra_jax.errors import UserError
from mantra_jax.eval import datasets
from mantra_jax.metrics import pixel as pixel_metrics
from mantra_jax.metrics import plots, report
from mantra_jax.metrics.progress import ProgressLine
from mantra_jax.metrics import pages

PredictFn = Callable[[np.ndarray], np.ndarray]
PAGE_INTERVAL_S = 10.0  # index.html is rewritten at most this often during a run (and at the end)
MAPS_DIR = "maps"  # the page's small overlay and mask images
PAGE_VALUES = (("set", None), ("AUC", "auc"), ("F1 at 0.5", "f1_at_0.5"))


@dataclasses.dataclass(frozen=True)
class EvaluationOptions:
    """How a folder is read and scored."""

    preset: str | None = None
    invert_masks: bool | None = None  # None: the preset decides
    resize_masks: bool = False
    negate_rule: bool = True
    invert_predictions: bool = False
    bins: int = pixel_metrics.DEFAULT_BINS
    max_images: int = 0  # 0: all; otherwise the first N forged and the first N authentic images
    n_panels: int = 4
    image_score: str = "mean"


def _predict(predict_fn: PredictFn, rgb: np.ndarray, name: str) -> np.ndarray:
    prob = np.asarray(predict_fn(rgb))
    if prob.ndim == 3 and prob.shape[-1] == 1:
        prob = prob[..., 0]
    if prob.shape != rgb.shape[:2]:
        raise ValueError(f"{name}: the predictor returned shape {prob.shape} for an image of shape {rgb.shape}")
    return prob


def _caption(row: dict) -> str:
    parts = [f"AUC {row['auc']:.3f}" if row["auc"] is not None else "AUC n/a"]
    if row["f1_at_0.5"] is not None:
        parts.append(f"F1@0.5 {row['f1_at_0.5']:.3f}")
    if row["negated"]:
        parts.append("negated")
    return "  ".join(parts)


def _count_skips(skipped: Sequence[dict]) -> dict:
    kinds = [s["kind"] for s in skipped]
    return {
        "n_skipped": kinds.count("image"),
        "n_unpaired_masks": kinds.count("mask"),
        "n_not_forged": kinds.count("not_forged"),
        "n_authentic_skipped": kinds.count("authentic"),
    }


def _new_page(out_dir: Path, metadata: dict | None, skipped: Sequence[dict] = ()) -> pages.RunPage:
    run = metadata or {}
    title = "evaluate: " + (provenance.describe(run) if "step" in run and "checkpoint" in run else
                            str(run.get("recomputed_from", "predictions")))
    page = pages.RunPage(out_dir, title=title, image_columns=("photo", "ground truth", "overlay", "mask"),
                         value_columns=[label for label, _ in PAGE_VALUES])
    caveat = provenance.card_caveat(run.get("checkpoint"))
    if caveat:
        page.add_note(caveat)
    for s in skipped:
        _page_skip(page, s)
    return page


def _page_skip(page: pages.RunPage, s: dict) -> None:
    page.skip(s["path"], f"{s['kind']}: {s['reason']}" + (f" ({s['detail']})" if s.get("detail") else ""))


def _page_row(page: pages.RunPage, row: dict, options: EvaluationOptions, shown: dict, kind: str) -> None:
    values = {label: kind if key is None else row.get(key) for label, key in PAGE_VALUES}
    page.add(pages.PageRow(row.get("image") or row["name"], shown, score=row.get(f"image_score_{options.image_score}"),
                           values=values))


def _colour_bar(out_dir: Path) -> Path:
    """The colour bar of the overlays and panels (plots.PROBABILITY_COLORMAP), as predict writes it."""
    return plots.write_colour_bar(out_dir)


def _write_maps(folder: Path, k: int, name: str, rgb: np.ndarray, prob: np.ndarray) -> dict:
    """The page's overlay (JPEG) and mask (PNG) of one image, as mantra_jax/infer/predict.py draws them
    full size, at most pages.THUMB_MAX_SIDE pixels on a side."""
    import cv2  # noqa: PLC0415

    from mantra_jax.infer import predict  # noqa: PLC0415  (JAX only when a model is run)

    small_rgb, _, small_prob = plots.thumbnail(rgb, np.zeros(rgb.shape[:2], np.uint8), prob, pages.THUMB_MAX_SIDE)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{k:05d}_" + (re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "image")
    paths = {"overlay": folder / f"{stem}_overlay.jpg", "mask": folder / f"{stem}_mask.png"}
    overlay = cv2.cvtColor(predict.overlay_image(small_rgb, small_prob), cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", overlay, (cv2.IMWRITE_JPEG_QUALITY, pages.THUMB_JPEG_QUALITY))
    if not ok:
        raise OSError(f"{paths['overlay']}: JPEG encoding failed")
    paths["overlay"].write_bytes(data.tobytes())
    predict.write_png(paths["mask"], predict.mask_image(small_prob))
    return paths


def _headline(summary: dict) -> dict:
    numbers = {label: summary[key] for key, label in report.HEADLINE_METRICS if key in summary}
    numbers.update({key: summary[key] for key in ("n_images", "n_skipped", "n_authentic") if key in summary})
    return numbers


def _finish(out_dir: Path, stats, authentic_stats, rows, skipped, options: EvaluationOptions,
            metadata: dict | None, notes: Sequence[dict] = ()) -> dict:
    summary = pixel_metrics.summarize(stats, negate_rule=options.negate_rule, invert=options.invert_predictions,
                                      authentic=authentic_stats, image_score=options.image_score)
    summary.update(_count_skips(skipped))
    summary["notes"] = list(notes)
    summary["options"] = dataclasses.asdict(options)
    if metadata:
        summary["run"] = dict(metadata)
    report.write_report(out_dir, summary, rows, skipped)
    return summary


def run_evaluation(predict_fn: PredictFn, pairs: Sequence[datasets.Pair], authentic_paths: Sequence[Path] | None,
                   out_dir: str | Path, options: EvaluationOptions = EvaluationOptions(), *,
                   skipped: Sequence[datasets.Skipped] = (), metadata: dict | None = None,
                   progress: bool = True) -> dict:
    """Runs ``predict_fn`` over the pairs (and authentic images) and writes the report.

    Args:
      predict_fn: uint8 HxWx3 RGB -> float HxW forgery likelihood in [0, 1].
      pairs: images with masks, e.g. from datasets.pair_images_and_masks.
      authentic_paths: authentic images for the image-level metrics, or None.
      out_dir: where report.json, report.md, per_image.csv, panels/ and the statistics go.
      options: reading and scoring options.
      skipped: files already left out while pairing; counted in the report with the rest.
      metadata: free-form run description stored under "run" in report.json.

    Unreadable images, unreadable masks and size mismatches (unless resized) are skipped and
    counted; a predictor error or a prediction of the wrong shape stops the run. Images read as
    their first frame (animated GIF, multi-page TIFF) are listed under ``notes``.
    Returns the summary written to report.json.
    """
    pixel_metrics.check_bins(options.bins)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = list(pairs)[: options.max_images or None]
    authentic_paths = None if authentic_paths is None else list(authentic_paths)[: options.max_images or None]
    skipped = [s.to_dict() if isinstance(s, datasets.Skipped) else dict(s) for s in skipped]
    if authentic_paths:  # images the pairing set aside as authentic, scored here as such, are not skipped
        scored = {Path(p).resolve() for p in authentic_paths}
        skipped = [s for s in skipped if not (s.get("kind") == "not_forged" and Path(s["path"]).resolve() in scored)]
    panels = plots.BestWorstPanels(options.n_panels)
    notes = []

    def note_frames(path, row=None):
        note = image_io.file_frames_note(path)
        if note:
            notes.append({"path": str(path), "note": note})
            if row is not None:
                row["note"] = note

    page = _new_page(out_dir, metadata, skipped)
    page_written = time.monotonic()
    page.write(refresh_seconds=round(PAGE_INTERVAL_S))

    def page_progress():
        nonlocal page_written
        if time.monotonic() - page_written >= PAGE_INTERVAL_S:
            page.write(refresh_seconds=round(PAGE_INTERVAL_S))
            page_written = time.monotonic()

    def skip(entry: datasets.Skipped):
        skipped.append(entry.to_dict())
        _page_skip(page, skipped[-1])

    stats, rows = [], []
    bar = ProgressLine(len(pairs), "forged") if progress and pairs else None
    for i, pair in enumerate(pairs, start=1):
        try:
            rgb, mask = datasets.load_pair(pair, invert_masks=options.invert_masks, preset=options.preset,
                                           resize_masks=options.resize_masks)
        except datasets.UnusableSample as e:
            skip(datasets.Skipped(str(pair.image), e.reason, "image", str(e)))
            logging.warning("skipped %s", e)
            if bar:
                bar.update(i)
            continue
        prob = _predict(predict_fn, rgb, pair.name)
        image_stats = pixel_metrics.image_stats(prob, mask, bins=options.bins, name=pair.name)
        row = pixel_metrics.image_metrics(image_stats, negate_rule=options.negate_rule,
                                          invert=options.invert_predictions)
        row.update(image=str(pair.image), mask=str(pair.mask))
        note_frames(pair.image, row)
        stats.append(image_stats)
        rows.append(row)
        panel_score = row["auc"] if row["auc"] is not None else row["f1_at_0.5"]
        panels.offer(panel_score, pair.name, rgb, mask, prob, _caption(row))
        shown = {"photo": pair.image, "ground truth": pair.mask,
                 **_write_maps(out_dir / MAPS_DIR, len(rows), pair.name, rgb, prob)}
        _page_row(page, row, options, shown, "forged")
        page_progress()
        if bar:
            bar.update(i)

    authentic_stats = None
    if authentic_paths is not None:
        authentic_stats = []
        bar = ProgressLine(len(authentic_paths), "authentic") if progress and authentic_paths else None
        for i, path in enumerate(authentic_paths, start=1):
            try:
                rgb = datasets.read_rgb(path)
            except datasets.UnusableSample as e:
                skip(datasets.Skipped(str(path), e.reason, "authentic", str(e)))
                logging.warning("skipped %s", e)
                if bar:
                    bar.update(i)
                continue
            name = Path(path).stem
            note_frames(path)
            prob = _predict(predict_fn, rgb, name)
            authentic_stats.append(pixel_metrics.image_stats(prob, None, bins=options.bins, name=name))
            row = {**pixel_metrics.image_metrics(authentic_stats[-1], negate_rule=options.negate_rule,
                                                 invert=options.invert_predictions), "image": str(path)}
            shown = {"photo": path, **_write_maps(out_dir / MAPS_DIR, len(rows) + len(authentic_stats) - 1, name,
                                                  rgb, prob)}
            _page_row(page, row, options, shown, "authentic")
            page_progress()
            if bar:
                bar.update(i)
        pixel_metrics.save_stats(out_dir / "authentic_stats.npz", authentic_stats, bins=options.bins)
    pixel_metrics.save_stats(out_dir / "stats.npz", stats, bins=options.bins)

    summary = _finish(out_dir, stats, authentic_stats, rows, skipped, options, metadata, notes)
    page.set_headline(_headline(summary), figures=panels.write(out_dir / "panels") + [_colour_bar(out_dir)])
    page.write()
    return summary


def recompute_from_stats(stats_dir: str | Path, out_dir: str | Path,
                         options: EvaluationOptions = EvaluationOptions()) -> dict:
    """Rewrites the report from a previous run's statistics with new scoring options (no model).

    Reading options (preset, mask inversion, resizing, image limit, bins) cannot change here:
    they, the skipped files and the run description are carried over from the previous
    report.json when present.
    """
    _check_out(out_dir)
    stats_dir = Path(stats_dir)
    stats_path = stats_dir / "stats.npz"
    if not stats_dir.is_dir():
        raise UserError(f"--from_stats {stats_dir} is not a folder: give the output folder of an earlier run")
    if not stats_path.is_file():
        raise UserError(f"{stats_path} does not exist: --from_stats needs the output folder of an earlier run")
    authentic_path = stats_dir / "authentic_stats.npz"
    try:
        stats = pixel_metrics.load_stats(stats_path)
        authentic_stats = pixel_metrics.load_stats(authentic_path) if authentic_path.exists() else None
    except (OSError, ValueError) as e:  # not an npz, or not ours (load_stats names the file)
        raise UserError(f"cannot read the statistics of {stats_dir}: {e}") from e
    previous = {}
    if (stats_dir / "report.json").exists():
        try:
            previous = json.loads((stats_dir / "report.json").read_text())
        except ValueError as e:
            raise UserError(f"{stats_dir / 'report.json'}: not a report (unreadable JSON: {e})") from None
        if not isinstance(previous, dict) or not all(
                isinstance(previous.get(k, t()), t) for k, t in (("run", dict), ("options", dict), ("skipped", list),
                                                                  ("notes", list))):
            raise UserError(f"{stats_dir / 'report.json'}: not a report written by experiments.evaluate")
    rows = [pixel_metrics.image_metrics(s, negate_rule=options.negate_rule, invert=options.invert_predictions)
            for s in stats]
    metadata = dict(previous.get("run", {}), recomputed_from=str(stats_dir))
    reading = {k: v for k, v in previous.get("options", {}).items()
               if k in ("preset", "invert_masks", "resize_masks", "max_images")}
    options = dataclasses.replace(options, bins=stats[0].bins if stats else options.bins, **reading)
    summary = _finish(Path(out_dir), stats, authentic_stats, rows, previous.get("skipped", []), options, metadata,
                      previous.get("notes", []))
    # The page: the new numbers, with the photos and masks the earlier run's per_image.csv names.
    files = {}
    if (stats_dir / "per_image.csv").is_file():  # without it, or without its name column: no photos shown
        with open(stats_dir / "per_image.csv", newline="", errors="replace") as f:
            files = {r["name"]: r for r in csv.DictReader(f) if r.get("name") is not None}
    page = _new_page(Path(out_dir), metadata, previous.get("skipped", []))
    for row in rows:
        earlier = files.get(row["name"], {})
        shown = {"photo": earlier.get("image") or None, "ground truth": earlier.get("mask") or None}
        _page_row(page, {**row, "image": earlier.get("image")}, options, shown, "forged")
    page.set_headline(_headline(summary))
    page.write()
    return summary


def _check_out(out_dir) -> None:
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UserError(f"--out {out_dir} is a file, not a folder: give a folder for the report")


def evaluate_checkpoint(checkpoint, images, masks, out_dir, options: EvaluationOptions = EvaluationOptions(), *,
                        authentic=None, step: provenance.StepChoice = provenance.DEFAULT_STEP,
                        progress: bool = True) -> dict:
    """Scores a checkpoint on the folders `images` and `masks` (and `authentic`, for the image-level
    metrics) with run_evaluation; report.json's "run" entry records the step scored and why, the
    model configuration, the command line and the folders. A missing or empty folder, an unusable
    checkpoint or an `out_dir` that is a file raise UserError.

    Returns the summary written to report.json (pixel_metrics.summarize: "n_images",
    "pixel_auc_mean", "pixel_auc_pooled", "f1_at_0.5_mean", "iou_at_0.5_mean", ..., "image_auc"
    with `authentic`), with "notes", "options" and "run"."""
    _check_out(out_dir)
    try:  # the folder checks raise these, naming the folder and the problem
        pairs, skipped = datasets.pair_images_and_masks(images, masks, preset=options.preset)
        authentic_paths = (datasets.list_authentic_images(authentic, preset=options.preset, skipped=skipped)
                           if authentic else None)
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from e
    logging.info("%d pairs, %d files skipped while pairing, %s authentic images", len(pairs), len(skipped),
                 "no" if authentic_paths is None else len(authentic_paths))
    from mantra_jax.infer.predict import Predictor  # noqa: PLC0415  (JAX only when a model is run)
    from mantra_jax.checkpoint import CheckpointError  # noqa: PLC0415

    try:  # no configuration or step, another configuration's weights, a head without forgery maps
        predictor = Predictor.from_checkpoint(checkpoint, step=step)
    except (CheckpointError, ValueError) as e:
        raise UserError(f"cannot use the checkpoint {checkpoint}: {e}") from e
    metadata = {**predictor.provenance, "images": str(images), "masks": str(masks),
                "authentic": None if authentic is None else str(authentic),
                "preset": options.preset or datasets.DEFAULT_PRESET.name}
    return run_evaluation(predictor.predict, pairs, authentic_paths, out_dir, options, skipped=skipped,
                          metadata=metadata, progress=progress)
