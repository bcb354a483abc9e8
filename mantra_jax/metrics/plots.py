"""The figures of the reports: benchmark panels and confusion matrices.

Panels (photo | ground truth | prediction, side by side): while the evaluation streams over a
folder, :class:`BestWorstPanels` keeps small thumbnails of the images that score best and worst
so far (never the full set), and writes them as PNG files at the end; drawn with OpenCV.
Confusion matrices (IMC, KCMI): `plot_confusion`; the sensitivity and robustness figures of
mantra_jax/eval/sensitivity.py: `plot_sensitivity`, `plot_robustness`; drawn with matplotlib
(imported when drawing).
"""
from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import re
from collections.abc import Sequence
import textwrap
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from mantra_jax.imc import taxonomy

_HEADER_HEIGHT = 22
_GAP = 4


def thumbnail(rgb_HxWx3: np.ndarray, mask_HxW: np.ndarray, prob_HxW: np.ndarray,
              max_side: int = 320) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three maps shrunk so that the longer side is at most ``max_side`` (never enlarged)."""
    height, width = mask_HxW.shape
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if scale == 1.0:
        return rgb_HxWx3.copy(), mask_HxW.copy(), np.asarray(prob_HxW, np.float32).copy()
    return (cv2.resize(rgb_HxWx3, size, interpolation=cv2.INTER_AREA),
            cv2.resize(mask_HxW.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST),
            cv2.resize(np.asarray(prob_HxW, np.float32), size, interpolation=cv2.INTER_AREA))


# One colour map for every forgery probability the project draws: predict's overlays, evaluate's
# panels and page overlays, and the colour bar beside them (perceptually uniform, readable in grey).
PROBABILITY_COLORMAP = cv2.COLORMAP_VIRIDIS
PROBABILITY_COLORMAP_NAME = "viridis"
# Overlays: the colour's opacity is this times the probability, so that p = 0 leaves the photo untouched.
OVERLAY_MAX_ALPHA = 0.8


def probability_colours(prob_HxW: np.ndarray) -> np.ndarray:
    """uint8 H x W x 3 RGB: each probability in PROBABILITY_COLORMAP (0 dark violet, 1 yellow)."""
    prob_u8 = np.clip(np.asarray(prob_HxW, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(prob_u8, PROBABILITY_COLORMAP), cv2.COLOR_BGR2RGB)


def probability_overlay(rgb_HxWx3: np.ndarray, prob_HxW: np.ndarray, max_alpha: float = OVERLAY_MAX_ALPHA) -> np.ndarray:
    """uint8 RGB: the colour of each probability over the photo with opacity max_alpha * p: a pixel
    of probability 0 is the photo's own, a pixel of probability 1 mostly the colour map's yellow."""
    prob = np.clip(np.asarray(prob_HxW, np.float32), 0.0, 1.0)[..., None]
    alpha = max_alpha * prob
    blend = (1.0 - alpha) * rgb_HxWx3.astype(np.float32) + alpha * probability_colours(prob[..., 0]).astype(np.float32)
    return np.rint(blend).astype(np.uint8)


def colour_bar(width: int, label: str = "forgery probability", height: int = 14) -> np.ndarray:
    """uint8 RGB: PROBABILITY_COLORMAP from 0 (left) to 1 (right) with ticks at 0, 0.5 and 1 and a label;
    in an overlay the colour's opacity grows with the probability (none at 0)."""
    width = max(int(width), 120)
    ramp = probability_colours(np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1)))
    text = np.full((30, width, 3), 255, np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    for value in (0.0, 0.5, 1.0):
        label_text = f"{value:g}"
        tw = cv2.getTextSize(label_text, font, scale, 1)[0][0]
        x = int(round(value * (width - 1)))
        cv2.line(text, (x, 0), (x, 4), (0, 0, 0), 1)
        cv2.putText(text, label_text, (min(max(0, x - tw // 2), width - tw), 14), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(text, label, (max(0, (width - cv2.getTextSize(label, font, scale, 1)[0][0]) // 2), 27), font, scale,
                (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([ramp, text], axis=0)


COLOUR_BAR_FILE = "probability_colour_bar.png"


def write_colour_bar(folder) -> Path:
    """folder/COLOUR_BAR_FILE: the colour bar of every overlay and panel of a run's page."""
    path = Path(folder) / COLOUR_BAR_FILE
    write_png(path, colour_bar(480, "forgery probability (overlay: no colour at 0)"))
    return path


def compose_panel(rgb_HxWx3: np.ndarray, mask_HxW: np.ndarray, prob_HxW: np.ndarray,
                  title: str = "") -> np.ndarray:
    """uint8 RGB image: a title strip over photo | truth (white = forged) | prediction
    (PROBABILITY_COLORMAP), with the colour bar under the prediction."""
    height, width = mask_HxW.shape
    truth = np.repeat((mask_HxW.astype(np.uint8) * 255)[:, :, None], 3, axis=2)
    prediction = probability_colours(prob_HxW)
    gap = np.full((height, _GAP, 3), 255, np.uint8)
    row = np.concatenate([rgb_HxWx3.astype(np.uint8), gap, truth, gap, prediction], axis=1)
    header = np.full((_HEADER_HEIGHT, row.shape[1], 3), 255, np.uint8)
    cv2.putText(header, title, (4, _HEADER_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    bar = colour_bar(width, "probability")[:, :width]
    footer = np.full((bar.shape[0], row.shape[1], 3), 255, np.uint8)
    footer[:, row.shape[1] - bar.shape[1]:] = bar
    return np.concatenate([header, row, footer], axis=0)


def write_png(path: str | Path, rgb_HxWx3: np.ndarray) -> None:
    path = Path(path)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb_HxWx3, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not be written")


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "image"


class BestWorstPanels:
    """Keeps the ``n`` best and ``n`` worst images seen so far, by a score where higher is better."""

    def __init__(self, n: int, max_side: int = 320):
        self.n = n
        self.max_side = max_side
        self._best: list = []  # min-heap of (score, tie, item): the weakest of the best on top
        self._worst: list = []  # min-heap of (-score, tie, item): the mildest of the worst on top
        self._tie = itertools.count()

    def offer(self, score: float | None, name: str, rgb_HxWx3, mask_HxW, prob_HxW, caption: str = "") -> None:
        if self.n <= 0 or score is None:
            return
        needs_best = len(self._best) < self.n or score > self._best[0][0]
        needs_worst = len(self._worst) < self.n or -score > self._worst[0][0]
        if not (needs_best or needs_worst):
            return
        item = (name, caption, thumbnail(rgb_HxWx3, mask_HxW, prob_HxW, self.max_side))
        tie = next(self._tie)
        if needs_best:
            (heapq.heappush if len(self._best) < self.n else heapq.heapreplace)(self._best, (score, tie, item))
        if needs_worst:
            (heapq.heappush if len(self._worst) < self.n else heapq.heapreplace)(self._worst, (-score, tie, item))

    def best(self) -> list:
        """(score, name, caption, thumbnails), best first."""
        return [(s, *item) for s, _, item in sorted(self._best, key=lambda e: (-e[0], e[1]))]

    def worst(self) -> list:
        """(score, name, caption, thumbnails), worst first."""
        return [(-s, *item) for s, _, item in sorted(self._worst, key=lambda e: (-e[0], e[1]))]

    def write(self, folder: str | Path) -> list[Path]:
        """Writes best_<k>_<name>.png and worst_<k>_<name>.png into ``folder``; returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for label, entries in (("best", self.best()), ("worst", self.worst())):
            for k, (score, name, caption, (rgb, mask, prob)) in enumerate(entries, start=1):
                title = f"{label} {k}: {name}  {caption}".strip()
                path = folder / f"{label}_{k:02d}_{_file_safe(name)}.png"
                write_png(path, compose_panel(rgb, mask, prob, title))
                written.append(path)
        return written


# Sensitivity and robustness figures (mantra_jax/eval/sensitivity.py).
#
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


_ATTACK_AXES = {"downscale": ("downscale factor (new size / old size)", True),
                "jpeg": ("JPEG quality Q (0-100)", True),
                "edge_blur": ("Gaussian kernel size in the edge band (pixels, k x k)", False)}


def plot_robustness(path, rows: Sequence[dict]) -> Path:
    """One panel per attack: AUC against the strength (stronger to the right), clean AUC dashed."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = next((r["auc"] for r in rows if r["attack"] == "none"), None)
    attacks = [a for a in _ATTACK_AXES if any(r["attack"] == a for r in rows)]
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
def confusion_labels(names, max_chars: int = 24) -> tuple[list[str], list[str]]:
    """(tick labels, key lines): names of at most `max_chars` characters are their own label; a
    longer one gets a short label with a number, "JPEGDoubleCompress [1]" (the part before a ":",
    else its start), and a key line "[1] <full name>". Labels are distinct whenever names are."""
    labels, key = [], []
    for name in names:
        if len(name) <= max_chars:
            labels.append(name)
            continue
        tag = f" [{len(key) + 1}]"
        stem = name.split(":", 1)[0] if ":" in name else name
        if len(stem) + len(tag) > max_chars:
            stem = stem[: max_chars - len(tag) - 1].rstrip() + "~"
        labels.append(stem + tag)
        key.append(f"[{len(key) + 1}] {name}")
    return labels, key


def plot_confusion(matrix, names, path, title=""):
    """The row-normalised confusion matrix as an image, long class names keyed below it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    n = len(names)
    labels, key = confusion_labels(names)
    width = 4 + 0.32 * n
    key_lines = [part for line in key for part in textwrap.wrap(line, int(width * 15), subsequent_indent="     ")]
    key_height = 0.15 * len(key_lines) + (0.2 if key_lines else 0.0)
    fig, ax = plt.subplots(figsize=(width, 3.5 + 0.3 * n + key_height))
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    if key_lines:
        fig.text(0.01, 0.01, "\n".join(key_lines), fontsize=7, va="bottom", ha="left")
    fig.tight_layout(rect=(0, key_height / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
