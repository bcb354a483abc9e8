"""The figures of the reports: benchmark panels and confusion matrices.

Panels (photo | ground truth | prediction, side by side): while the evaluation streams over a
folder, :class:`BestWorstPanels` keeps small thumbnails of the images that score best and worst
so far (never the full set), and writes them as PNG files at the end; drawn with OpenCV.
Confusion matrices (IMC, KCMI): `plot_confusion`, drawn with matplotlib (imported when drawing).
"""
from __future__ import annotations

import heapq
import itertools
import re
import textwrap
from pathlib import Path

import cv2
import numpy as np

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


def compose_panel(rgb_HxWx3: np.ndarray, mask_HxW: np.ndarray, prob_HxW: np.ndarray,
                  title: str = "") -> np.ndarray:
    """uint8 RGB image: a title strip over photo | truth (white = forged) | prediction (viridis)."""
    height, width = mask_HxW.shape
    truth = np.repeat((mask_HxW.astype(np.uint8) * 255)[:, :, None], 3, axis=2)
    prob_u8 = np.clip(np.asarray(prob_HxW, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    prediction = cv2.cvtColor(cv2.applyColorMap(prob_u8, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)
    gap = np.full((height, _GAP, 3), 255, np.uint8)
    row = np.concatenate([rgb_HxWx3.astype(np.uint8), gap, truth, gap, prediction], axis=1)
    header = np.full((_HEADER_HEIGHT, row.shape[1], 3), 255, np.uint8)
    cv2.putText(header, title, (4, _HEADER_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([header, row], axis=0)


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
