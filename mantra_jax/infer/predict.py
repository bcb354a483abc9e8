"""Forgery localisation with a trained or converted ManTra-Net checkpoint.

From Python (e.g. a notebook), load once and predict many times:

    predictor = Predictor.from_checkpoint("runs/mantranet")
    prob_HxW = predictor.predict(rgb_uint8_HxWx3)        # float32 probabilities in [0, 1]
    rgb, prob_HxW = predictor.predict_file("photo.jpg")
    prob_NxHxW = predictor.predict_batch(rgb_uint8_NxHxWx3, batch_size=8)  # equal-sized images
    feat_C = predictor.features(rgb_uint8_HxWx3, pooled=True)  # mean Featex features

`predict_folder`, the command line (experiments/predict.py)

    python -m experiments.predict --checkpoint DIR --out OUTDIR [--step best] [--npy] IMAGE_OR_FOLDER...
    python -m experiments.predict [--checkpoint DIR] --trace_checkpoint IMC_DIR [--trace_level 1] --out OUTDIR ...

writes for each image OUTDIR/<output>_mask.png (round(255 p), 8-bit grey), OUTDIR/<output>_overlay.png
(the probability colour map over the photo, opaque where p is high, the photo itself
where p = 0; OUTDIR/probability_colour_bar.png is its colour bar, plots.write_colour_bar), with --npy OUTDIR/<output>.npy (float32 H x W), and one row
of OUTDIR/summary.csv: file, output (the name of its outputs: the stem, with "-2", "-3", ...
appended when inputs share a stem), height, width, score (the mean likelihood, the paper's image
score), seconds (reading and predicting; the first image of each tile size includes compilation),
note (e.g. that an animated GIF or a multi-page TIFF was read as its first frame). Folders are
searched recursively; files inside OUTDIR are never inputs (earlier outputs), and a run whose
images all lie there says so. A file that cannot be read or predicted (or a symbolic link loop) is
reported on stderr, listed in OUTDIR/skipped.csv with the reason, and skipped; `predict_folder`
returns 1 (the command's exit status) when no image at all was processed and raises UserError
(exit status 2, one line) for an unusable checkpoint or an --out that is a file. OUTDIR/run.json records the checkpoint
step read (--step best | latest | N) and why, the model configuration and the command line
(mantra_jax.provenance).

With an IMC checkpoint (`trace_checkpoint`, beside the mask checkpoint or alone) each image also
gets OUTDIR/<output>_trace_L<k>.png, its manipulation map at hierarchy level k
(mantra_jax/infer/trace.py: class colours over the grey photo, shaded by confidence), the folder one trace_legend_L<k>.png, and
summary.csv the columns trace.TRACE_SUMMARY_FIELDS (dominant class, its share, the next classes);
run.json records the IMC checkpoint under "trace". Without a mask checkpoint the mask, overlay
and score are left out. When the mask model's Featex is the IMC model's, Featex runs once.

OUTDIR/index.html (mantra_jax/metrics/pages.py) shows one row per image (photo, overlay, mask,
trace map, score, dominant class) and the skipped files with their reasons; it is rewritten
every PAGE_INTERVAL_S seconds while the run goes on (reloading itself in a browser) and at the end.

Every image is processed in tiles on canvases of one size (mantra_jax.nn.tiled.
canvas_probabilities): the same map as the whole-image pass, from two programs compiled once per
model, tile and precision, whatever the image sizes, so that a folder of many sizes costs its
pixels, not one compilation per size; memory is bounded by the tile. `tile` sets the tiles'
interior size (default: one of tiled.TILE_CHOICES by the image's size, tiled.choose_tile).
`max_untiled_pixels` above 0 lets images up to that many pixels take the whole-image pass
instead, compiled for each new size, when XLA's memory analysis of it fits the free memory of
the device (tiled.whole_image_program).
"""
from __future__ import annotations

import csv
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from mantra_jax import provenance
from mantra_jax import workdir
from mantra_jax.data import images
from mantra_jax.errors import UserError
from mantra_jax.imc import taxonomy
from mantra_jax.metrics.progress import ProgressLine, printable
from mantra_jax.metrics import pages, plots
from mantra_jax.nn import featex, model, tiled
from mantra_jax.nn.config import ModelConfig

# 0: every image takes the fixed-shape tiled pass. The whole-image pass compiles the network for
# each new image size (about four times the arithmetic of a 120,000-pixel image for the 1/8-width
# model on a 2-core CPU: benchmarks/README.md, compile_cost.py) and peaks at about 5.2 KB per pixel
# for the released model (benchmarks/tiled_memory.py).
DEFAULT_MAX_UNTILED_PIXELS = 0
SUMMARY_FIELDS = ("file", "output", "height", "width", "score", "seconds", "note")
PAGE_INTERVAL_S = 10.0  # index.html is rewritten at most this often during a run (and at the end)


@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def batch_probabilities(variables, rgb_NxHxWx3, cfg, dtype):
    """sigmoid(ManTra-Net logits) of a uint8 batch in one pass (float32 N x H x W)."""
    return jax.nn.sigmoid(model.apply(variables, model.preprocess(rgb_NxHxWx3), cfg, dtype=dtype)["logits"])


@functools.partial(jax.jit, static_argnames=("cfg", "dtype", "pooled"))
def featex_features(featex_params, rgb_HxWx3, cfg, dtype, pooled):
    """Featex features of a uint8 image: float32 H x W x C, or their spatial mean (C,)."""
    feat = featex.apply(featex_params, model.preprocess(rgb_HxWx3)[None].astype(dtype), cfg).astype(jnp.float32)
    return jnp.mean(feat, axis=(0, 1, 2)) if pooled else feat[0]


class Predictor:
    """A ManTra-Net model ready for inference: parameters on the device, its programs compiled
    once for every image size (fixed-shape tiles, see the module docstring)."""

    def __init__(
        self,
        cfg: ModelConfig,
        variables: dict,
        *,
        dtype="float32",
        tile: Optional[int] = None,
        max_untiled_pixels: int = DEFAULT_MAX_UNTILED_PIXELS,
        memory_budget_bytes: Optional[int] = None,
        features_only: bool = False,
    ):
        """`dtype`: the convolutions' computation dtype ("float32" or "bfloat16").
        `tile`: the tiles' interior size (None: tiled.choose_tile's by the image's size); with a
        `tile` given every image is tiled. `max_untiled_pixels` > 0: images up to that many
        pixels whose whole-image program fits `memory_budget_bytes` (None: the device's free
        memory when the image comes) by XLA's memory analysis take the whole-image pass (one
        compilation per image size). `features_only`: accept any head (an IMC model too) for
        `features`; the probability methods still need a ManTra-Net model."""
        self.cfg = cfg
        if not features_only:
            self._check_localiser()
        if tile is not None and int(tile) < 1:
            raise ValueError(f"tile must be a positive number of pixels or None, got {tile}")
        if int(max_untiled_pixels) < 0:
            raise ValueError(f"max_untiled_pixels must be >= 0, got {max_untiled_pixels}")
        model.check_variables(variables, cfg)
        self.variables = jax.device_put(variables)
        self.dtype = jnp.dtype(dtype)
        if self.dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
            raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
        self.tile = None if tile is None else int(tile)
        self.max_untiled_pixels = int(max_untiled_pixels)
        self.memory_budget_bytes = None if memory_budget_bytes is None else int(memory_budget_bytes)
        self._whole_programs: dict = {}  # (height, width) -> compiled whole-image program, or None: tiled
        self.provenance: Optional[dict] = None  # set by from_checkpoint: the step read and why

    @classmethod
    def from_checkpoint(cls, directory, *, step: provenance.StepChoice = provenance.DEFAULT_STEP,
                        **kwargs) -> "Predictor":
        """Any checkpoint directory: a training run or converted released weights. `step`: "best"
        (by validation loss), "latest" or a step number; `provenance` then says which step was
        read and why (mantra_jax.provenance)."""
        from mantra_jax import checkpoint  # Orbax is only needed here

        cfg, variables, record = checkpoint.load_model_at(directory, step)
        predictor = cls(cfg, variables, **kwargs)
        predictor.provenance = record
        return predictor

    def _check_localiser(self):
        if self.cfg.head != "ladn":
            raise ValueError(
                f"inference needs a ManTra-Net model (head 'ladn'); this one has the {self.cfg.head!r} head"
            )

    def _whole_program(self, height: int, width: int):
        """The compiled whole-image program for this size, or None when the image is tiled."""
        if self.tile is not None or height * width > self.max_untiled_pixels:
            return None
        if (height, width) not in self._whole_programs:
            program, _ = tiled.whole_image_program(self.variables, height, width, self.cfg, dtype=self.dtype,
                                                   budget_bytes=self.memory_budget_bytes)
            self._whole_programs[(height, width)] = program
        return self._whole_programs[(height, width)]

    def is_tiled(self, height: int, width: int) -> bool:
        """Whether an image of this size is processed tile by tile (compiles the whole-image
        program to ask XLA what it needs, unless the pixel limit or `tile` already decides)."""
        return self._whole_program(height, width) is None

    def predict(self, rgb) -> np.ndarray:
        """Probabilities (float32 H x W) of an image array: uint8 RGB, or anything
        images.to_rgb_uint8 converts (grey, RGBA, 16-bit, float in [0, 1])."""
        self._check_localiser()
        rgb = images.to_rgb_uint8(rgb, "image array")
        height, width = rgb.shape[:2]
        program = self._whole_program(height, width)
        if program is not None:
            return np.asarray(program(self.variables, rgb))
        return tiled.canvas_probabilities(self.variables, rgb, self.cfg, tile=self.tile, dtype=self.dtype)

    def predict_batch(self, rgb_NxHxWx3, *, batch_size: Optional[int] = None) -> np.ndarray:
        """Probabilities (float32 N x H x W) of N equal-sized uint8 RGB images, in whole-image
        passes of `batch_size` images (None: all at once); a short last batch is padded with
        copies of its last image, so that every pass shares one compilation per image size. The
        stored batch-norm statistics and per-image anomaly statistics make an image's map
        independent of its batch neighbours. Never tiled: for patch-sized images."""
        self._check_localiser()
        rgb = np.asarray(rgb_NxHxWx3)
        if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8 or not len(rgb):
            raise ValueError(f"expected uint8 N x H x W x 3 images (N >= 1), got {rgb.dtype} of shape {rgb.shape}")
        size = len(rgb) if batch_size is None else int(batch_size)
        out = []
        for start in range(0, len(rgb), size):
            chunk = rgb[start:start + size]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
            out.append(np.asarray(batch_probabilities(self.variables, padded, self.cfg, self.dtype))[:len(chunk)])
        return np.concatenate(out)

    def features(self, rgb, *, pooled: bool = False) -> np.ndarray:
        """The Featex features (float32 H x W x C) of an image array (as `predict` takes), or with
        `pooled` their mean over the image (C,), the vector the KCMI test compares. Any head."""
        rgb = images.to_rgb_uint8(rgb, "image array")
        return np.asarray(featex_features(self.variables["params"]["Featex"], rgb, self.cfg, self.dtype, pooled))

    def predict_file(self, path, *, max_pixels: int = images.DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 RGB image, float32 probabilities) of an image file; raises images.ImageReadError
        naming the file when it cannot be read or holds more than `max_pixels` pixels."""
        rgb = images.read_rgb(path, max_pixels=max_pixels)
        return rgb, self.predict(rgb)


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
def mask_image(prob_HxW) -> np.ndarray:
    """The probability map as 8-bit grey: round(255 p)."""
    return np.rint(np.clip(np.asarray(prob_HxW, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def overlay_image(rgb_HxWx3, prob_HxW) -> np.ndarray:
    """The probabilities over the photo, uint8 RGB: the colour map of every probability figure
    (plots.PROBABILITY_COLORMAP) with an opacity that grows with the probability, so that a pixel
    the model calls pristine (p = 0) keeps the photo's own colour (plots.probability_overlay)."""
    return plots.probability_overlay(rgb_HxWx3, prob_HxW)


def image_score(prob_HxW) -> float:
    """The image-level forgery score of the paper: the mean pixel likelihood."""
    return float(np.mean(prob_HxW, dtype=np.float64))


def write_png(path, image) -> None:
    """Writes a grey or RGB uint8 image as PNG (encoded in memory: non-ASCII paths work)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    Path(path).write_bytes(data.tobytes())


# --------------------------------------------------------------------------------------------
# Folders of images (the command line: experiments/predict.py)
# --------------------------------------------------------------------------------------------
def collect_inputs(paths: Sequence[str], exclude: Optional[Path] = None
                   ) -> tuple[list[Path], list[tuple[str, str]], bool, int]:
    """(image files, (path, reason) of inputs left out, whether a folder was given, how many
    images of the folders were left out because they lie under `exclude`).

    Folders are searched recursively; files under `exclude` (the output folder) are left out, so
    that earlier outputs are never taken for inputs. Every other entry that is not an image file
    is left out with a reason (images.list_images, images.file_problem): missing inputs, other
    file names, broken links and link loops, FIFOs, folders that cannot be read."""
    files, skipped, any_folder, n_excluded = [], [], False, 0
    excluded = exclude.resolve() if exclude is not None else None

    def in_out(path) -> bool:  # the folder holding it resolved (a link loop itself is not followed)
        folder = Path(os.path.realpath(Path(path).parent))
        return excluded is not None and (excluded == folder or excluded in folder.parents)

    for p in map(Path, paths):
        if p.is_dir():
            any_folder = True
            others: list = []
            for f in images.list_images(p, others):
                if in_out(f.resolve()):
                    n_excluded += 1
                    continue
                files.append(f)
            skipped += [(path, reason) for path, reason in others if not in_out(path)]
        else:
            problem = images.file_problem(p)
            if problem is None:
                files.append(p)
            else:
                skipped.append((str(p), problem))
    return files, skipped, any_folder, n_excluded


# The longest ending written after a stem ("_trace_L5.png", "_overlay.png") and a "-N" of
# _unique_stem fit beside a stem of this many bytes in a file name of 255 bytes.
_MAX_STEM_BYTES = 255 - 24


def _unique_stem(stem: str, used: set) -> str:
    while len(os.fsencode(stem)) > _MAX_STEM_BYTES:  # a long name: shortened, kept unique below
        stem = stem[:-1]
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}-{n}"
    used.add(name)
    return name


def predict_folder(checkpoint, inputs: Sequence[str], out, *, step: provenance.StepChoice = provenance.DEFAULT_STEP,
                   precision: str = "float32", tile: Optional[int] = None,
                   max_untiled_pixels: int = DEFAULT_MAX_UNTILED_PIXELS, npy: bool = False,
                   max_pixels: int = images.DEFAULT_MAX_PIXELS, trace_checkpoint=None, trace_level: Optional[int] = None,
                   trace_threshold: Optional[float] = None, overwrite: bool = False) -> int:
    """Predicts every image of `inputs` (files or folders) into the folder `out` (see the module
    docstring for what is written): masks with the ManTra-Net `checkpoint`, manipulation maps at
    `trace_level` with the IMC `trace_checkpoint`, or both (either may be None, not both);
    None for the level or the threshold: trace.DEFAULT_LEVEL, trace.DEFAULT_THRESHOLD.
    Returns 0 when at least one image was processed, else 1; raises UserError for an `out` that
    is a file, in use, or holds files (unless `overwrite`: mantra_jax.workdir.output_folder) and
    for a missing, unusable or wrong-kind checkpoint (before `out` is touched)."""
    if checkpoint is None and trace_checkpoint is None:
        raise UserError("give a ManTra-Net checkpoint (--checkpoint) for forgery masks, an IMC checkpoint "
                        "(--trace_checkpoint) for manipulation maps, or both")
    out = workdir.check_output_folder(out)
    predictor = tracer = None  # loaded before the folder is touched: a refused run changes nothing
    if checkpoint is not None:
        predictor = _load(Predictor, checkpoint, "checkpoint", "ladn", step=step, dtype=precision, tile=tile,
                          max_untiled_pixels=max_untiled_pixels)
    if trace_checkpoint is not None:
        from mantra_jax.infer import trace  # noqa: PLC0415  (trace imports this module)

        trace_level = trace.DEFAULT_LEVEL if trace_level is None else trace_level
        trace_threshold = trace.DEFAULT_THRESHOLD if trace_threshold is None else trace_threshold
        tracer = _load(trace.Tracer, trace_checkpoint, "trace checkpoint", "imc", step=step, level=trace_level,
                       dtype=precision, tile=tile, max_untiled_pixels=max_untiled_pixels)
    # One rule for every output folder (workdir.output_folder): a folder holding files is refused unless
    # `overwrite`, which replaces the earlier run's files; a second run writing it is refused.
    with workdir.output_folder(out, what="predict run", overwrite=overwrite):
        files, skipped, any_folder, n_excluded = collect_inputs(inputs, exclude=out)
        for path, reason in skipped:
            print(printable(f"skipped {path}: {reason}"), file=sys.stderr)
        if n_excluded:
            print(f"{n_excluded} image(s) left out because they lie in the output folder {out} (earlier outputs "
                  "are never inputs)", file=sys.stderr)
        if not files:
            if n_excluded:
                print(f"no image to process: every image found lies in the output folder {out}; give another "
                      "--out", file=sys.stderr)
            else:
                print("no image to process", file=sys.stderr)
            _write_skipped(out, skipped)
            _page(out, checkpoint, trace_checkpoint, skipped).write()
            return 1
        return _predict_into(predictor, tracer, files, skipped, any_folder, out, npy=npy, max_pixels=max_pixels,
                             threshold=trace_threshold, page=_page(out, checkpoint, trace_checkpoint, skipped))


_KINDS = {"ladn": ("a ManTra-Net (forgery mask) checkpoint", "--checkpoint"),
          "imc": ("an IMC (manipulation type) checkpoint", "--trace_checkpoint")}


def _load(cls, directory, what: str, head: str, *, step, **kwargs):
    """`cls.from_checkpoint(directory)` (a Predictor or a Tracer), every failure one UserError
    naming the folder; a checkpoint of the other kind says which flag takes it."""
    from mantra_jax.checkpoint import CheckpointError, read_model_config  # noqa: PLC0415

    try:
        cfg = read_model_config(directory)
        if cfg.head != head:
            kind, flag = _KINDS.get(cfg.head, (f"a checkpoint with the {cfg.head!r} head", None))
            raise ValueError(f"it is {kind} (head {cfg.head!r}), not {_KINDS[head][0]}"
                             + (f": give it as {flag}" if flag else ""))
        return cls.from_checkpoint(directory, step=step, **kwargs)
    except (CheckpointError, ValueError) as e:
        raise UserError(f"cannot use the {what} {directory}: {e}") from e


def _page(out: Path, checkpoint, trace_checkpoint, skipped) -> pages.RunPage:
    models = [f"mask {checkpoint}" if checkpoint is not None else "",
              f"trace {trace_checkpoint}" if trace_checkpoint is not None else ""]
    page = pages.RunPage(out, title="predict: " + ", ".join(m for m in models if m))
    caveat = provenance.card_caveat(checkpoint, trace_checkpoint)
    if caveat:
        page.add_note(caveat)
    for path, reason in skipped:
        page.skip(path, reason)
    return page


def _predict_into(predictor: Optional[Predictor], tracer, files, skipped, any_folder: bool, out: Path, *, npy: bool,
                  max_pixels: int, threshold: float, page: pages.RunPage) -> int:
    record = dict(predictor.provenance) if predictor is not None else {}
    if predictor is not None:
        print(provenance.describe(predictor.provenance), file=sys.stderr)
    fields = SUMMARY_FIELDS
    headline, figures = {}, []
    if predictor is not None:
        figures.append(plots.write_colour_bar(out))
    trace_counts = None
    if tracer is not None:
        from mantra_jax.infer import trace  # noqa: PLC0415

        both = trace.MaskAndTrace(predictor, tracer) if predictor is not None else None
        record["trace"] = {**tracer.provenance, "level": tracer.level, "threshold": threshold,
                           "featex_shared": bool(both and both.shared)}
        print(f"trace: {provenance.describe(tracer.provenance)}, level {tracer.level}"
              + (", Featex shared with the mask model" if both and both.shared else ""), file=sys.stderr)
        fields = SUMMARY_FIELDS + trace.TRACE_SUMMARY_FIELDS
        legend = trace.write_legend_png(out, tracer.level, threshold)
        headline["trace level"] = tracer.level
        if threshold > 0:
            headline["trace threshold"] = threshold
        trace_counts = np.zeros(len(trace.palette(tracer.level)), np.int64)

        def set_legend():
            names, colours, total = taxonomy.class_names(tracer.level), trace.palette(tracer.level), trace_counts.sum()
            order = sorted(np.flatnonzero(trace_counts), key=lambda i: (-trace_counts[i], i))
            page.set_legend(f"Trace legend, level {tracer.level} (share of the maps' pixels; opacity: confidence)",
                            [(f"{i} {names[i]}", colours[i], trace_counts[i] / total) for i in order], legend)
    if headline or figures:
        page.set_headline(headline, figures=figures)
    (out / "run.json").write_text(json.dumps(record, indent=1))
    progress = ProgressLine(len(files), "predict", min_interval_s=0.0) if any_folder or len(files) > 1 else None
    say = progress.message if progress is not None else lambda t: print(printable(t), file=sys.stderr)
    used_stems: set = set()
    processed, page_written = 0, time.monotonic()
    page.write(refresh_seconds=round(PAGE_INTERVAL_S))
    # Any file name: one that is not UTF-8 is written with its odd bytes as \udcXX escapes.
    with open(out / "summary.csv", "w", newline="", encoding="utf-8", errors="backslashreplace") as summary_file:
        summary = csv.writer(summary_file)
        summary.writerow(fields)
        for i, path in enumerate(files, start=1):
            start = time.perf_counter()
            prob = trace_map = None
            try:
                rgb = images.read_rgb(path, max_pixels=max_pixels)
                if tracer is None:
                    prob = predictor.predict(rgb)
                elif predictor is None:
                    trace_map = tracer.trace(rgb)
                else:
                    prob, trace_map = both(rgb)
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
                reason = str(e) if isinstance(e, images.ImageReadError) else f"{type(e).__name__}: {e}"
                say(f"skipped {path}: {reason}")
                skipped.append((str(path), reason))
                page.skip(path, reason)
            else:
                seconds = time.perf_counter() - start
                stem = _unique_stem(path.stem, used_stems)
                shown = {"photo": path}
                row = [str(path), stem, rgb.shape[0], rgb.shape[1], "", f"{seconds:.3f}"]
                if prob is not None:
                    write_png(out / f"{stem}_mask.png", mask_image(prob))
                    write_png(out / f"{stem}_overlay.png", overlay_image(rgb, prob))
                    if npy:
                        np.save(out / f"{stem}.npy", prob.astype(np.float32), allow_pickle=False)
                    shown.update(overlay=out / f"{stem}_overlay.png", mask=out / f"{stem}_mask.png")
                    row[4] = f"{image_score(prob):.6f}"
                note = images.file_frames_note(path)
                if note:
                    say(f"note {path}: {note}")
                row.append(note)
                values = {}
                if trace_map is not None:
                    trace_png = out / trace.trace_png_name(stem, trace_map.level)
                    trace.write_trace_png(trace_png, trace_map, threshold, rgb)
                    shown["trace"] = trace_png
                    traced = trace.trace_summary(trace_map, threshold)
                    trace_counts += trace.class_counts(trace_map, threshold)
                    set_legend()
                    row += [traced[k] for k in trace.TRACE_SUMMARY_FIELDS]
                    values = {"dominant class": traced["trace_dominant"],
                              "its share": traced["trace_dominant_share"]}
                summary.writerow(row)
                summary_file.flush()
                page.add(pages.PageRow(str(path), shown, score=image_score(prob) if prob is not None else None,
                                       values=values))
                processed += 1
            if progress is not None:
                progress.update(i, path.name)
            if time.monotonic() - page_written >= PAGE_INTERVAL_S:
                page.write(refresh_seconds=round(PAGE_INTERVAL_S))
                page_written = time.monotonic()
    _write_skipped(out, skipped)
    page.write()
    print(f"{processed} image(s) processed, {len(skipped)} skipped; results in {out} (index.html shows them)",
          file=sys.stderr)
    return 0 if processed else 1


def _write_skipped(out: Path, skipped):
    if not skipped:
        return
    path = out / "skipped.csv"
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        writer = csv.writer(f)
        writer.writerow(("file", "error"))
        writer.writerows(skipped)

