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

from collections.abc import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

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


class NotAnImcModel(ValueError):
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

