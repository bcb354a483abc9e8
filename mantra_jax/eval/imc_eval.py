"""IMC evaluation of a saved checkpoint: top-1/3/5/10 at every level and the level-1 confusion.

The metrics, the report format and the sample set are the trainer's own: a fixed, leaf-balanced
set of manipulated crops drawn from one split of a photo folder (`imc_pipeline.make_val_batches`),
scored by `mantra_jax.metrics.imc` (`eval_sums`, `summarize`; its `write_report` writes the
report). With the trainer's seed (`TRAINER_VAL_SEED`), sample count and crop on split "val", the
sample set is the trainer's validation set (so the numbers match its validation of the same
step); split "test" scores photos the trainer never saw, neither for learning nor for model
selection.
"""
from __future__ import annotations

import json
import sys

from collections.abc import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from mantra_jax import provenance
from mantra_jax.errors import UserError
from mantra_jax.data import imc_pipeline
from mantra_jax.data.photos import PatchIndex
from mantra_jax.imc import taxonomy
from mantra_jax.metrics import imc as imc_metrics
from mantra_jax.nn import model as model_lib
from mantra_jax.nn.config import ModelConfig

TRAINER_VAL_SEED = imc_metrics.VAL_SEED  # the seed of the trainer's fixed validation set
# The trainer's defaults (experiments/imc385.py, experiments/common.py), for checkpoints that do
# not say what they were trained with.
DEFAULT_CROP = 128
DEFAULT_SAMPLES = 3800

Progress = Callable[[int, int], None]


class NotAnImcModel(UserError, ValueError):
    """The checkpoint holds a network without the IMC decision head (or an unknown class count)."""


def trained_level(cfg: ModelConfig, where: str = "checkpoint") -> int:
    """The hierarchy level an IMC network was trained at, from its class count."""
    if cfg.head != "imc":
        raise NotAnImcModel(
            f"{where}: not an IMC model: it has the {cfg.head!r} head (a ManTra-Net localisation "
            "network); IMC evaluation needs a checkpoint of the IMC pretraining (head 'imc')")
    if cfg.num_classes not in taxonomy.LEVEL_SIZES:
        raise NotAnImcModel(
            f"{where}: an IMC head with {cfg.num_classes} classes matches no hierarchy level "
            f"(class counts per level: {taxonomy.LEVEL_SIZES})")
    return taxonomy.LEVEL_SIZES.index(cfg.num_classes)


def evaluate(cfg: ModelConfig, variables: dict, index: PatchIndex, *, split: str = "test",
             n_samples: int = DEFAULT_SAMPLES, batch_size: int = 64, crop: int = DEFAULT_CROP,
             seed: int = TRAINER_VAL_SEED, dtype=jnp.float32, progress: Optional[Progress] = None) -> tuple[dict, dict, int]:
    """Scores an IMC network on `n_samples` manipulated crops of one split of `index`.

    Returns (summary, sums, level): `summary` as `imc_metrics.summarize` gives it ("val_loss"
    and "L{j}_top{k}" for every level j <= level), `sums` the summed evaluation arrays
    (numpy; "n", the top-k counts and the level-1 "confusion" matrix), and the trained level.
    """
    level = trained_level(cfg)
    if not index.entries(split):
        raise ValueError(f"{index.root}: the {split!r} split has no {index.patch_size}x{index.patch_size} "
                         "patch (too few photos in the folder?)")
    if not 0 < crop <= index.patch_size:
        raise ValueError(f"crop must be in 1..{index.patch_size} (the patch size), got {crop}")
    batches = imc_pipeline.make_val_batches(index, seed=seed, n_samples=n_samples, batch_size=batch_size,
                                            level=level, crop=crop, split=split)

    @jax.jit
    def eval_step(variables, batch):
        logits = model_lib.apply(variables, model_lib.preprocess(batch["image"]), cfg, dtype=dtype, pooled=True)["logits"]
        return imc_metrics.eval_sums(logits, batch["label"], batch["leaf"], batch["weight"], level)

    device_variables = jax.device_put(variables)
    sums = None
    if progress is not None:
        progress(0, n_samples)  # the samples are made: the clock starts with the network
    for i, batch in enumerate(batches, start=1):
        batch = {k: batch[k] for k in ("image", "label", "leaf", "weight")}
        batch_sums = jax.tree.map(lambda a: np.asarray(a, np.float64), eval_step(device_variables, batch))
        sums = batch_sums if sums is None else jax.tree.map(np.add, sums, batch_sums)
        if progress is not None:
            progress(min(i * batch_size, n_samples), n_samples)
    return imc_metrics.summarize(sums, level), sums, level


def sample_usage(index: PatchIndex, *, split: str, n_samples: int, seed: int = TRAINER_VAL_SEED,
                 crop: int = DEFAULT_CROP) -> dict:
    """How much of the split a sample set uses: photos and patches in the split, and used."""
    entries = index.entries(split)
    plan = imc_pipeline.make_val_plan(entries, seed=seed, n_samples=n_samples, patch_size=index.patch_size,
                                      crop=crop) if entries else []
    return {"n_photos_in_split": len({e.path for e in entries}), "n_patches_in_split": len(entries),
            "n_photos_used": len({s.entry.path for s in plan}), "n_patches_used": len({s.entry for s in plan})}



# A setting of `evaluate_checkpoint` <- the trainer's flag of the same meaning (experiments/imc385.py).
TRAINER_FLAGS = {"crop": "crop", "samples": "val_samples", "data_dir": "data_dir"}


def evaluate_checkpoint(checkpoint, data_dir: Optional[str], out_dir, *, split: str = "test",
                        samples: Optional[int] = None, batch_size: int = 64, patch: int = 256,
                        crop: Optional[int] = None, seed: int = TRAINER_VAL_SEED,
                        step: provenance.StepChoice = provenance.DEFAULT_STEP, precision: str = "float32",
                        progress: bool = True) -> dict:
    """Loads the checkpoint, scores it on `split` and writes the report; returns the report's content.

    What the checkpoint knows is the default: `data_dir`, `samples` and `crop` left None come from
    the trainer's flags.txt (--data_dir, --val_samples, --crop), else the bundled photos,
    DEFAULT_SAMPLES and DEFAULT_CROP; the report's "run" entry lists those taken from it
    (settings_from_checkpoint) and those assumed (settings_assumed, also said on stderr)."""
    from mantra_jax.data import bundled, photos  # noqa: PLC0415
    from mantra_jax.nn import config  # noqa: PLC0415
    from mantra_jax import checkpoint as checkpoint_lib  # noqa: PLC0415
    from mantra_jax.metrics.progress import ProgressLine  # noqa: PLC0415

    cfg = checkpoint_lib.read_model_config(checkpoint)
    trained_level(cfg, where=str(checkpoint))  # fails before any photo is read
    settings, taken = provenance.settings_from_checkpoint(
        checkpoint, {"crop": crop, "samples": samples, "data_dir": data_dir}, TRAINER_FLAGS,
        {"crop": DEFAULT_CROP, "samples": DEFAULT_SAMPLES, "data_dir": ""})
    assumed = [name for name, value in (("crop", crop), ("samples", samples), ("data_dir", data_dir))
               if value is None and name not in taken]
    if assumed:  # a checkpoint that does not say what it was trained with (converted weights)
        shown = {"crop": f"crop {settings['crop']}", "samples": f"{settings['samples']} samples",
                 "data_dir": "the bundled photos"}
        print(f"note: {checkpoint} does not say what it was trained with (no {provenance.RUN_FLAGS_FILE}); "
              f"assumed the trainer's defaults: {', '.join(shown[n] for n in assumed)}. Pass "
              f"{', '.join('--' + n for n in assumed)} to score it as it was trained.", file=sys.stderr, flush=True)
    folder = settings["data_dir"] or bundled.default_photo_dir()
    index = photos.build_patch_index(folder, patch=patch)
    cfg, variables, record = checkpoint_lib.load_model_at(checkpoint, step)
    bar = None

    def progress_fn(done, total):
        nonlocal bar
        bar = bar or ProgressLine(total, f"imc {split}")
        bar.update(done)

    summary, sums, level = evaluate(
        cfg, variables, index, split=split, n_samples=settings["samples"], batch_size=batch_size,
        crop=settings["crop"], seed=seed, dtype=config.dtype(precision), progress=progress_fn if progress else None)
    usage = sample_usage(index, split=split, n_samples=settings["samples"], seed=seed, crop=settings["crop"])
    run_info = dict(record, data_dir=str(folder), split=split, samples=settings["samples"], **usage, patch=patch,
                    crop=settings["crop"], seed=seed, precision=precision, settings_from_checkpoint=taken,
                    settings_assumed=assumed)
    path = imc_metrics.write_report(out_dir, summary, sums, level, run=run_info)
    return json.loads(path.read_text())
