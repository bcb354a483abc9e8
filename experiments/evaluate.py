"""Scores a checkpoint on a forgery-localisation benchmark folder.

  python -m experiments.evaluate --checkpoint DIR [--step best] --images DIR --masks DIR [--authentic DIR] --out OUTDIR
  python -m experiments.evaluate --from_stats OUTDIR --out OUTDIR2 --invert_predictions   # no model run

Writes OUTDIR/report.json (its "run" entry: the checkpoint step scored and why, the model
configuration, the command line, the folders), report.md, per_image.csv, panels/ (best and worst images) and the
per-image statistics (stats.npz, authentic_stats.npz) from which every metric variant can be
recomputed with --from_stats; prints the headline metrics as a table. Metric conventions: mantra_jax/metrics/pixel.py; folder
layouts (--preset): mantra_jax/eval/datasets.py. A user error (a missing or empty folder, an
unusable checkpoint, an --out that is a file) is printed as one line, `error: ...`, and the exit
status is 2; images read as their first frame (animated GIF, multi-page TIFF) are listed under
`notes` in report.json and in the note column of per_image.csv.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging as std_logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from experiments import common
from mantra_jax import provenance
from mantra_jax import workdir
from mantra_jax.data import images as image_io
from mantra_jax.errors import UserError, exit_on_user_error
from mantra_jax.eval import datasets
from mantra_jax.metrics import pixel as pixel_metrics
from mantra_jax.metrics import plots, report
from mantra_jax.metrics.progress import ProgressLine

PredictFn = Callable[[np.ndarray], np.ndarray]


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
    panels = plots.BestWorstPanels(options.n_panels)
    notes = []

    def note_frames(path, row=None):
        note = image_io.file_frames_note(path)
        if note:
            notes.append({"path": str(path), "note": note})
            if row is not None:
                row["note"] = note

    stats, rows = [], []
    bar = ProgressLine(len(pairs), "forged") if progress and pairs else None
    for i, pair in enumerate(pairs, start=1):
        try:
            rgb, mask = datasets.load_pair(pair, invert_masks=options.invert_masks, preset=options.preset,
                                           resize_masks=options.resize_masks)
        except datasets.UnusableSample as e:
            skipped.append(datasets.Skipped(str(pair.image), e.reason, "image", str(e)).to_dict())
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
                skipped.append(datasets.Skipped(str(path), e.reason, "authentic", str(e)).to_dict())
                logging.warning("skipped %s", e)
                if bar:
                    bar.update(i)
                continue
            name = Path(path).stem
            note_frames(path)
            authentic_stats.append(
                pixel_metrics.image_stats(_predict(predict_fn, rgb, name), None, bins=options.bins, name=name))
            if bar:
                bar.update(i)
        pixel_metrics.save_stats(out_dir / "authentic_stats.npz", authentic_stats, bins=options.bins)
    pixel_metrics.save_stats(out_dir / "stats.npz", stats, bins=options.bins)

    summary = _finish(out_dir, stats, authentic_stats, rows, skipped, options, metadata, notes)
    panels.write(out_dir / "panels")
    return summary


def recompute_from_stats(stats_dir: str | Path, out_dir: str | Path,
                         options: EvaluationOptions = EvaluationOptions()) -> dict:
    """Rewrites the report from a previous run's statistics with new scoring options (no model).

    Reading options (preset, mask inversion, resizing, image limit, bins) cannot change here:
    they, the skipped files and the run description are carried over from the previous
    report.json when present.
    """
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
        previous = json.loads((stats_dir / "report.json").read_text())
    rows = [pixel_metrics.image_metrics(s, negate_rule=options.negate_rule, invert=options.invert_predictions)
            for s in stats]
    metadata = dict(previous.get("run", {}), recomputed_from=str(stats_dir))
    reading = {k: v for k, v in previous.get("options", {}).items()
               if k in ("preset", "invert_masks", "resize_masks", "max_images")}
    options = dataclasses.replace(options, bins=stats[0].bins if stats else options.bins, **reading)
    return _finish(Path(out_dir), stats, authentic_stats, rows, previous.get("skipped", []), options, metadata,
                   previous.get("notes", []))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this entry point's flags (kept out of import time so tests can import the module)."""
    fv = flag_values
    flags.DEFINE_string("checkpoint", None, "Model checkpoint folder.", flag_values=fv)
    common.define_step_flag(fv)
    flags.DEFINE_string("images", None, "Folder of forged images.", flag_values=fv)
    flags.DEFINE_string("masks", None, "Folder of ground-truth masks.", flag_values=fv)
    flags.DEFINE_string("authentic", None, "Folder of authentic images (enables image-level metrics).",
                        flag_values=fv)
    flags.DEFINE_string("out", None, "Output folder.", flag_values=fv)
    flags.DEFINE_string("from_stats", None, "Recompute the report from this earlier output folder's "
                        "statistics instead of running a model.", flag_values=fv)
    flags.DEFINE_enum("preset", None, sorted(datasets.PRESETS), "Benchmark folder layout.", flag_values=fv)
    flags.DEFINE_bool("invert_masks", None, "Masks mark the forgery in black (unset: as the preset says).",
                      flag_values=fv)
    flags.DEFINE_bool("resize_masks", False, "Resize masks of another size to the image (nearest) instead "
                      "of skipping the image.", flag_values=fv)
    flags.DEFINE_bool("negate_rule", True, "The paper's rule: negate the prediction for the AUC when over "
                      "50% of the ground truth is forged.", flag_values=fv)
    flags.DEFINE_bool("invert_predictions", False, "Per-image max over p and 1-p for F1 and IoU.", flag_values=fv)
    flags.DEFINE_integer("bins", pixel_metrics.DEFAULT_BINS, "Histogram bins over [0, 1] (a power of two).",
                         flag_values=fv)
    flags.DEFINE_integer("max_images", 0, "Score only the first N forged and N authentic images (0: all).",
                         lower_bound=0, flag_values=fv)
    flags.DEFINE_integer("n_panels", 4, "Best and worst images drawn as panels.", lower_bound=0, flag_values=fv)
    flags.DEFINE_enum("image_score", "mean", ["mean", "max"], "Image score for image-level metrics.",
                      flag_values=fv)


def options_from_flags(fv: flags.FlagValues) -> EvaluationOptions:
    return EvaluationOptions(
        preset=fv.preset, invert_masks=fv.invert_masks, resize_masks=fv.resize_masks, negate_rule=fv.negate_rule,
        invert_predictions=fv.invert_predictions, bins=pixel_metrics.check_bins(fv.bins),
        max_images=fv.max_images, n_panels=fv.n_panels, image_score=fv.image_score)


def evaluate_from_flags(fv: flags.FlagValues) -> dict:
    """What ``main`` does, on any parsed FlagValues."""
    if not fv.out:
        raise app.UsageError("--out is required")
    if Path(fv.out).exists() and not Path(fv.out).is_dir():
        raise UserError(f"--out {fv.out} is a file, not a folder: give a folder for the report")
    options = options_from_flags(fv)
    if fv.from_stats:
        return recompute_from_stats(fv.from_stats, fv.out, options)
    missing = [name for name in ("checkpoint", "images", "masks") if not fv[name].value]
    if missing:
        raise app.UsageError(f"missing flags: {', '.join('--' + m for m in missing)} (or use --from_stats)")
    try:  # the folder checks raise these, naming the folder and the problem
        pairs, skipped = datasets.pair_images_and_masks(fv.images, fv.masks, preset=fv.preset)
        authentic = datasets.list_authentic_images(fv.authentic, preset=fv.preset) if fv.authentic else None
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from e
    logging.info("%d pairs, %d files skipped while pairing, %s authentic images", len(pairs), len(skipped),
                 "no" if authentic is None else len(authentic))
    from mantra_jax.predict import Predictor  # noqa: PLC0415  (JAX only when a model is run)
    from mantra_jax.checkpoint import CheckpointError  # noqa: PLC0415

    try:  # no configuration or step, another configuration's weights, a head without forgery maps
        predictor = Predictor.from_checkpoint(fv.checkpoint, step=fv.step)
    except (CheckpointError, ValueError) as e:
        raise UserError(f"cannot use the checkpoint {fv.checkpoint}: {e}") from e
    metadata = {**predictor.provenance, "images": fv.images, "masks": fv.masks, "authentic": fv.authentic,
                "preset": fv.preset or datasets.DEFAULT_PRESET.name}
    return run_evaluation(predictor.predict, pairs, authentic, fv.out, options, skipped=skipped, metadata=metadata)


class _QuietOrbax(std_logging.Filter):
    """Drops Orbax's INFO lines (hundreds per checkpoint restored); its warnings stay."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


@exit_on_user_error
def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.get_absl_handler().addFilter(_QuietOrbax())
    out = flags.FLAGS.out  # a second run writing this folder is refused
    with workdir.lock(out, what="evaluation") if out else contextlib.nullcontext():
        summary = evaluate_from_flags(flags.FLAGS)
    run_info = summary.get("run", {})
    title = provenance.describe(run_info) if "step" in run_info else "Forgery localisation benchmark"
    rows = [[label, summary[key]] for key, label in report.HEADLINE_METRICS if key in summary]
    rows += [[key, summary[key]] for key in ("n_images", "n_skipped", "n_authentic") if key in summary]
    common.print_table(["metric", "value"], rows, title=title)
    print(f"report: {Path(flags.FLAGS.out) / 'report.md'}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
