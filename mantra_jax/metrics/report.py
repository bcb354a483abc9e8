"""Benchmark report files: report.json (summary), report.md (markdown tables), per_image.csv."""
from __future__ import annotations

import collections
import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

# The headline metrics, in the order of the markdown table: (key, label).
HEADLINE_METRICS = (
    ("pixel_auc_mean", "pixel AUC, per-image mean"),
    ("pixel_auc_pooled", "pixel AUC, pooled over all pixels"),
    ("f1_at_0.5_mean", "pixel F1 at 0.5, per-image mean"),
    ("f1_best_mean", "pixel F1 at the best threshold per image (oracle), mean"),
    ("iou_at_0.5_mean", "pixel IoU at 0.5, per-image mean"),
    ("image_auc", "image AUC"),
    ("image_balanced_accuracy_at_0.5", "image balanced accuracy at score 0.5"),
    ("image_balanced_accuracy_best", "image balanced accuracy at the best threshold (oracle)"),
)
COUNT_KEYS = (
    "n_images", "n_skipped", "n_unpaired_masks", "n_authentic", "n_authentic_skipped", "n_auc_scored",
    "n_auc_undefined", "n_empty_masks", "n_f1_scored", "n_negated", "n_inverted_at_0.5",
)
CONVENTION_KEYS = (
    "negate_rule", "invert_predictions", "threshold_rule", "bins", "image_score", "auc_error_bound", "auc_policy",
    "f1_policy", "authentic_pixel_policy",
)
_MAX_LISTED = 20  # names per line in report.md; report.json lists them all
PER_IMAGE_COLUMNS = (
    "name", "auc", "negated", "f1_at_0.5", "iou_at_0.5", "f1_best", "best_threshold", "inverted",
    "forged_fraction", "image_score_mean", "image_score_max", "height", "width", "image", "mask", "note",
)


def _json_safe(value):
    """NaN and infinities become None, numpy scalars plain numbers, paths strings."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _format(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_format(v) if not isinstance(v, float) else f'{v:.2g}'}" for k, v in value.items())
    return str(value)


def markdown_report(summary: Mapping, skipped: Sequence[Mapping] = ()) -> str:
    """The summary as markdown: headline metrics, counts, conventions, skip reasons."""
    title = summary.get("run", {}).get("name") or "Forgery localisation benchmark"
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {label} | {_format(summary[key])} |" for key, label in HEADLINE_METRICS if key in summary]
    lines += ["", "| count | value |", "|---|---|"]
    lines += [f"| {key} | {_format(summary[key])} |" for key in COUNT_KEYS if key in summary]
    lines += ["", "| convention | value |", "|---|---|"]
    lines += [f"| {key} | {_format(summary[key])} |" for key in CONVENTION_KEYS if key in summary]
    negated = summary.get("negated_images")
    if negated:
        lines += ["", "| images negated by the rule, for | images |", "|---|---|"]
        for metric, names in negated.items():
            listed = ", ".join(names[:_MAX_LISTED]) + (f" ... ({len(names)} in all)" if len(names) > _MAX_LISTED else "")
            lines.append(f"| {metric} | {listed or 'none'} |")
    notes = summary.get("notes")
    if notes:
        lines += ["", "| note | file |", "|---|---|"]
        lines += [f"| {n['note']} | {n['path']} |" for n in notes]
    run = {**summary.get("run", {}), **summary.get("options", {})}
    if run:
        lines += ["", "| run and options | value |", "|---|---|"]
        lines += [f"| {key} | {_format(value)} |" for key, value in run.items()
                  if not isinstance(value, Mapping)]  # the model configuration: in report.json
    if skipped:
        reasons = collections.Counter((s["kind"], s["reason"]) for s in skipped)
        lines += ["", "| skipped (kind) | reason | files |", "|---|---|---|"]
        lines += [f"| {kind} | {reason} | {n} |" for (kind, reason), n in sorted(reasons.items())]
        lines += ["", "Every skipped file, with details, is listed under `skipped` in report.json."]
    return "\n".join(lines) + "\n"


def write_per_image_csv(path: str | Path, rows: Iterable[Mapping]) -> None:
    rows = list(rows)
    extra = sorted({k for row in rows for k in row} - set(PER_IMAGE_COLUMNS))
    columns = [c for c in PER_IMAGE_COLUMNS if any(c in row for row in rows)] + extra
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:  # any file name
        writer = csv.DictWriter(f, fieldnames=columns or list(PER_IMAGE_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else _json_safe(row.get(k)) for k in columns})


def write_report(out_dir: str | Path, summary: Mapping, rows: Iterable[Mapping],
                 skipped: Sequence[Mapping] = ()) -> dict[str, Path]:
    """Writes report.json (summary plus every skipped file), report.md and per_image.csv.

    Returns the written paths by kind.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped = [dict(s) for s in skipped]
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md", "csv": out_dir / "per_image.csv"}
    report = dict(_json_safe(summary))
    report["skipped"] = _json_safe(skipped)
    paths["json"].write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(markdown_report(report, skipped), encoding="utf-8", errors="backslashreplace")
    write_per_image_csv(paths["csv"], rows)
    return paths
