"""End-to-end ManTra-Net training on synthesised forgeries (splicing, copy-move, removal,
enhancement), with the initialisations of the paper's Table 7.

The loss is the pixel-wise binary cross-entropy computed from the logits (never from a sigmoid
output: the double-sigmoid defect keeps other ports at ln 2). Validation reports, per forgery type
and overall, the mean per-image pixel F1 at 0.5 (the layout of the paper's Table 6) and the pooled
pixel AUC, from score histograms accumulated on the device.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mantra_jax import checkpoint as ckpt_lib
from mantra_jax.data import forgery_pipeline, forgeries
from mantra_jax.metrics import pixel as pixel_metrics
from mantra_jax.nn import config as config_lib
from mantra_jax.nn import model as model_lib
from mantra_jax.nn.config import ModelConfig
from mantra_jax.train.loop import Task

INITS = ("random", "half_freeze", "half_random", "authors")
TYPES = forgeries.FORGERY_TYPES
BINS = 256


def initial_variables(model_cfg: ModelConfig, init: str, checkpoint: Optional[str]):
    """A function rng -> variables for the chosen initialisation (Table 7, or the authors' weights)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "random":
        return lambda rng: model_lib.init(rng, model_cfg)
    if not checkpoint:
        raise ValueError(f"init {init!r} needs a checkpoint (--imc_checkpoint)")
    src_cfg, src = ckpt_lib.load_model(checkpoint)
    if config_lib.featex_config_fields(src_cfg) != config_lib.featex_config_fields(model_cfg):
        raise ValueError(f"{checkpoint}: its feature extractor does not match the model configuration")

    def init_fn(rng):
        fresh = model_lib.init(rng, model_cfg)
        if init == "authors":
            if src_cfg.head != "ladn":
                raise ValueError(f"{checkpoint}: init 'authors' needs a full ManTra-Net checkpoint")
            model_lib.check_variables(src, model_cfg, what=f"checkpoint {checkpoint}")
            return jax.tree.map(jnp.asarray, src)
        fresh["params"]["Featex"] = jax.tree.map(jnp.asarray, src["params"]["Featex"])
        return fresh

    return init_fn


def make_optimizer(init: str, learning_rate: float, featex_learning_rate: float):
    """Adam; the feature extractor frozen (half freeze) or at its own rate (half random)."""
    if init == "half_freeze":
        featex_opt = optax.set_to_zero()
    elif init == "half_random":
        featex_opt = optax.adam(featex_learning_rate)
    else:
        return optax.adam(learning_rate)
    labels = lambda params: {k: jax.tree.map(lambda _: "featex" if k == "Featex" else "ladn", v)
                             for k, v in params.items()}
    return optax.multi_transform({"featex": featex_opt, "ladn": optax.adam(learning_rate)}, labels)


def make_task(model_cfg: ModelConfig, *, patch_index, learning_rate: float = 1e-4, init: str = "random",
              checkpoint: Optional[str] = None, featex_learning_rate: float = 5e-5,
              type_weights=(1, 1, 1, 1), pristine_share: float = 0.0, postprocess: Optional[dict] = None,
              val_per_type: int = 64, val_batch_size: int = 16, workers: int = 0, patch_size: int = 256,
              self_donor_prob: float = 0.0, donor_history_prob: float = 0.0) -> Task:
    """The end-to-end ManTra-Net task (what experiments.mantranet trains) for `loop.train`.

    model_cfg: a ManTra-Net configuration (head "ladn"); patch_index: the pristine photos
    (photos.build_patch_index); init: one of INITS, "random", the paper's Table 7 settings
    "half_random" / "half_freeze" (Featex from the IMC `checkpoint`, learning at
    `featex_learning_rate` or frozen) or "authors" (a whole ManTra-Net `checkpoint`).
    The synthesis (forgery_pipeline.make_train_dataset) on patch_size x patch_size patches:
    forgery types by `type_weights`, `pristine_share` untouched samples, optional whole-image
    `postprocess`, and for splices `self_donor_prob` (the donor is the sample's own patch) and
    `donor_history_prob` (the donor is processed by a random IMC manipulation). The fixed
    validation set (val_per_type forgeries per type) is synthesised the same way. The loss is the
    pixel-wise binary cross-entropy of the N x P x P logits against the masks; the validation
    summary holds "val_loss" and the pixel metrics."""
    if model_cfg.head != "ladn":
        raise ValueError("end-to-end training needs the ManTra-Net head (head='ladn')")
    freeze = init == "half_freeze"

    def logits_of(params, batch_stats, image, dtype, train):
        if freeze:
            params = dict(params, Featex=jax.lax.stop_gradient(params["Featex"]))
        out = model_lib.apply({"params": params, "batch_stats": batch_stats}, model_lib.preprocess(image),
                              model_cfg, train=train, dtype=dtype)
        return out["logits"], out.get("batch_stats")

    def loss(params, batch_stats, batch, dtype):
        logits, new_stats = logits_of(params, batch_stats, batch["image"], dtype, True)
        mask = batch["mask"].astype(jnp.float32)
        bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, mask))
        return bce, (new_stats, {"forged_share": jnp.mean(mask)})

    def eval_sums(variables, batch, dtype):
        logits = model_lib.apply(variables, model_lib.preprocess(batch["image"]), model_cfg, dtype=dtype)["logits"]
        mask = batch["mask"].astype(jnp.float32)
        w = batch["weight"]
        prob = jax.nn.sigmoid(logits)
        bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, mask), axis=(1, 2))
        pred = (prob >= 0.5).astype(jnp.float32)
        tp = jnp.sum(pred * mask, axis=(1, 2))
        fp = jnp.sum(pred * (1 - mask), axis=(1, 2))
        fn = jnp.sum((1 - pred) * mask, axis=(1, 2))
        f1 = jnp.where(tp + fp + fn > 0, 2 * tp / jnp.maximum(2 * tp + fp + fn, 1), 0.0)
        forged = (jnp.sum(mask, axis=(1, 2)) > 0).astype(jnp.float32) * w
        kind = jnp.where(batch["kind"] < 0, len(TYPES), batch["kind"])  # pristine last
        onehot = jax.nn.one_hot(kind, len(TYPES) + 1) * w[:, None]  # (B, 5)
        # Score histograms per kind and pixel label, for AUC: segment ids kind * 2 * BINS + label * BINS + bin.
        bins = jnp.clip(jnp.floor(prob * BINS), 0, BINS - 1).astype(jnp.int32)
        seg = (kind[:, None, None] * 2 + batch["mask"].astype(jnp.int32)) * BINS + bins
        hist = jax.ops.segment_sum(jnp.broadcast_to(w[:, None, None], seg.shape).reshape(-1), seg.reshape(-1),
                                   num_segments=(len(TYPES) + 1) * 2 * BINS)
        return {
            "n": jnp.sum(w), "loss": jnp.sum(bce * w),
            "f1_sum": (f1 * forged) @ onehot, "f1_n": forged @ onehot,
            "hist": hist.reshape(len(TYPES) + 1, 2, BINS),
        }

    def summarize(sums):
        out = {"val_loss": float(sums["loss"]) / max(float(sums["n"]), 1.0)}
        f1_sum, f1_n, hist = np.asarray(sums["f1_sum"]), np.asarray(sums["f1_n"]), np.asarray(sums["hist"])
        for t, name in enumerate(TYPES):
            if f1_n[t] > 0:
                out[f"f1_{name}"] = float(f1_sum[t] / f1_n[t])
                auc = pixel_metrics.histogram_auc(hist[t, 1], hist[t, 0])
                if auc is not None:
                    out[f"auc_{name}"] = auc
        if f1_n[: len(TYPES)].sum() > 0:
            out["f1_overall"] = float(f1_sum[: len(TYPES)].sum() / f1_n[: len(TYPES)].sum())
        all_hist = hist.sum(axis=0)
        auc = pixel_metrics.histogram_auc(all_hist[1], all_hist[0])
        if auc is not None:
            out["auc_overall"] = auc
        return out

    def train_dataset(seed, shard_index, shard_count, batch_size):
        return forgery_pipeline.make_train_dataset(
            patch_index, seed=seed, batch_size=batch_size, type_weights=tuple(type_weights),
            pristine_share=pristine_share, postprocess=postprocess, worker_count=workers, patch_size=patch_size,
            shard_index=shard_index, shard_count=shard_count, self_donor_prob=self_donor_prob,
            donor_history_prob=donor_history_prob)

    def val_batches():
        batches = forgery_pipeline.make_val_batches(patch_index, seed=54321, n_per_type=val_per_type,
                                                    batch_size=val_batch_size, patch_size=patch_size,
                                                    postprocess=postprocess, self_donor_prob=self_donor_prob,
                                                    donor_history_prob=donor_history_prob)
        return [{k: b[k] for k in ("image", "mask", "kind", "weight")} for b in batches]

    def final_report(workdir: Path, summary: dict, sums: dict):
        write_localisation_report(workdir, summary)

    return Task(
        name=f"mantranet_{init}",
        model_cfg=model_cfg,
        init_variables=initial_variables(model_cfg, init, checkpoint),
        optimizer=make_optimizer(init, learning_rate, featex_learning_rate),
        loss=loss, eval_sums=eval_sums, summarize=summarize,
        train_dataset=train_dataset, val_batches=val_batches, final_report=final_report,
        settings={"data": None if patch_index is None else patch_index.settings(),
                  "init": init,
                  "init_checkpoint": str(Path(checkpoint).absolute()) if checkpoint else None,
                  "featex_learning_rate": featex_learning_rate, "type_weights": list(type_weights),
                  "pristine_share": pristine_share, "postprocess": postprocess, "patch_size": patch_size,
                  "val_per_type": val_per_type, "val_batch_size": val_batch_size,
                  **({"self_donor_prob": self_donor_prob, "donor_history_prob": donor_history_prob}
                     if self_donor_prob or donor_history_prob else {})},
        outputs=("localisation_report.json", "localisation_report.md"),
    )


def write_localisation_report(outdir, summary: dict):
    """localisation_report.json and a markdown table in the layout of the paper's Table 6."""
    outdir = Path(outdir)
    (outdir / "localisation_report.json").write_text(json.dumps(summary, indent=1))
    cols = list(TYPES) + ["overall"]
    lines = ["# Validation pixel F1 (at 0.5, mean per image) and pooled pixel AUC", "",
             "| metric | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for metric in ("f1", "auc"):
        vals = [summary.get(f"{metric}_{c}") for c in cols]
        lines.append(f"| {metric.upper()} | " + " | ".join("-" if v is None else f"{100 * v:.1f}" for v in vals) + " |")
    (outdir / "localisation_report.md").write_text("\n".join(lines) + "\n")
