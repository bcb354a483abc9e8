"""The IMC pretraining task: which manipulation was applied to a patch.

The network is Featex plus the IMC decision head (a 3x3 conv to the classes of one hierarchy
level). It is fully convolutional and predicts a class map (the paper's Fig. 3b); the patch label
meets it through the map's spatial mean: the loss is the cross-entropy of the spatially averaged
logits (global average pooling of the class map), computed without materialising the map
(`featex.imc_head_pooled`). Validation reports top-1/3/5/10 at the trained level and, through the
hierarchy, at every coarser level, plus a confusion matrix at level 1 (27 classes: 24 types, the
double-JPEG type in 4 groups of parameters; long names are numbered and keyed under the plot).
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import optax

from mantra_jax.data import imc_pipeline
from mantra_jax.imc import taxonomy
from mantra_jax.metrics import imc as imc_metrics
from mantra_jax.nn import model as model_lib
from mantra_jax.nn.config import ModelConfig
from mantra_jax.train.loop import Task


def cross_entropy(logits_NxC, labels_N, weights_N=None):
    losses = optax.softmax_cross_entropy_with_integer_labels(logits_NxC, labels_N)
    if weights_N is None:
        return jnp.mean(losses)
    return jnp.sum(losses * weights_N) / jnp.maximum(jnp.sum(weights_N), 1.0)


def make_task(model_cfg: ModelConfig, *, level: int, patch_index, learning_rate: float,
              val_samples: int = 3800, val_batch_size: int = 64, crop: int = 128, workers: int = 0,
              init_variables=None) -> Task:
    """The IMC task at hierarchy `level` (0 = 7 families ... 5 = 380 leaves), what
    experiments.imc385 trains, for `loop.train`.

    model_cfg: an IMC configuration (head "imc", num_classes = taxonomy.num_classes(level));
    patch_index: the pristine photos (photos.build_patch_index); batches of crop x crop patches,
    each manipulated by one of the 380 leaves (imc_pipeline.make_train_dataset); the loss is the
    cross-entropy of the spatially pooled N x classes logits; the validation summary holds
    "val_loss" and "L{j}_top{k}" for every level j <= level, on `val_samples` fixed samples.
    init_variables: rng -> variables (None: model.init)."""
    level = taxonomy.level_index(level)
    if model_cfg.head != "imc" or model_cfg.num_classes != taxonomy.num_classes(level):
        raise ValueError(f"the IMC task at level {level} needs head='imc' and "
                         f"num_classes={taxonomy.num_classes(level)}; got {model_cfg.head!r}, {model_cfg.num_classes}")

    def loss(params, batch_stats, batch, dtype):
        x = model_lib.preprocess(batch["image"])
        out = model_lib.apply({"params": params, "batch_stats": batch_stats}, x, model_cfg,
                              train=True, dtype=dtype, pooled=True)
        logits = out["logits"]
        ce = cross_entropy(logits, batch["label"])
        acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return ce, (out["batch_stats"], {"top1": acc})

    def eval_sums(variables, batch, dtype):
        x = model_lib.preprocess(batch["image"])
        logits = model_lib.apply(variables, x, model_cfg, dtype=dtype, pooled=True)["logits"]
        return imc_metrics.eval_sums(logits, batch["label"], batch["leaf"], batch["weight"], level)

    def train_dataset(seed, shard_index, shard_count, batch_size):
        return imc_pipeline.make_train_dataset(
            patch_index, seed=seed, batch_size=batch_size, level=level, crop=crop,
            worker_count=workers, shard_index=shard_index, shard_count=shard_count)

    def val_batches():
        batches = imc_pipeline.make_val_batches(patch_index, seed=imc_metrics.VAL_SEED, n_samples=val_samples,
                                                batch_size=val_batch_size, level=level, crop=crop)
        return [{k: b[k] for k in ("image", "label", "leaf", "weight")} for b in batches]

    def default_init(rng):
        return model_lib.init(rng, model_cfg)

    return Task(
        name=f"imc_L{level}",
        model_cfg=model_cfg,
        init_variables=init_variables or default_init,
        optimizer=optax.adam(learning_rate),
        loss=loss,
        eval_sums=eval_sums,
        summarize=functools.partial(imc_metrics.summarize, level=level),
        train_dataset=train_dataset,
        val_batches=val_batches,
        final_report=lambda workdir, summary, sums: imc_metrics.write_report(workdir, summary, sums, level),
        settings={"data": None if patch_index is None else patch_index.settings(),
                  "crop": crop, "val_samples": val_samples,
                  "val_batch_size": val_batch_size},
        outputs=("imc_report.json", "imc_report.md", "confusion_L*.png"),
    )
