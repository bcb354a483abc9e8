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

import json
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mantra_jax.data import imc_pipeline
from mantra_jax.imc import taxonomy
from mantra_jax.nn import model as model_lib
from mantra_jax.nn.config import ModelConfig
from mantra_jax.train.loop import Task

TOPK = (1, 3, 5, 10)


def cross_entropy(logits_NxC, labels_N, weights_N=None):
    losses = optax.softmax_cross_entropy_with_integer_labels(logits_NxC, labels_N)
    if weights_N is None:
        return jnp.mean(losses)
    return jnp.sum(losses * weights_N) / jnp.maximum(jnp.sum(weights_N), 1.0)


def confusion_level(level: int) -> int:
    return min(1, level)


def make_task(model_cfg: ModelConfig, *, level: int, patch_index, learning_rate: float,
              val_samples: int = 3800, val_batch_size: int = 64, crop: int = 128, workers: int = 0,
              init_variables=None) -> Task:
    """The IMC task at hierarchy `level` (0 = 7 families ... 5 = 380 leaves)."""
    level = taxonomy.level_index(level)
    if model_cfg.head != "imc" or model_cfg.num_classes != taxonomy.num_classes(level):
        raise ValueError(f"the IMC task at level {level} needs head='imc' and "
                         f"num_classes={taxonomy.num_classes(level)}; got {model_cfg.head!r}, {model_cfg.num_classes}")
    levels = list(range(level + 1))
    # Constant tables: leaf -> node at every level, and fine-level class -> coarser class.
    leaf_nodes = jnp.asarray(np.stack([taxonomy.leaf_to_level(np.arange(380), j) for j in levels]))
    to_coarse = [jnp.asarray(taxonomy.level_matrix(level, j)) for j in levels]
    conf_level = confusion_level(level)
    n_conf = taxonomy.num_classes(conf_level)

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
        w = batch["weight"]
        probs = jax.nn.softmax(logits, axis=-1)
        sums = {"n": jnp.sum(w), "loss": jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]) * w)}
        for j in levels:
            p = probs @ to_coarse[j]
            true = leaf_nodes[j][batch["leaf"]]
            p_true = jnp.take_along_axis(p, true[:, None], axis=-1)
            rank = jnp.sum(p > p_true, axis=-1)  # classes ranked strictly above the truth
            for k in TOPK:
                sums[f"L{j}_top{k}"] = jnp.sum((rank < k) * w)
            if j == conf_level:
                pred = jnp.argmax(p, -1)
                onehot = lambda a: jax.nn.one_hot(a, n_conf, dtype=jnp.float32)
                sums["confusion"] = (onehot(true) * w[:, None]).T @ onehot(pred)
        return sums

    def summarize(sums):
        n = max(float(sums["n"]), 1.0)
        out = {"val_loss": float(sums["loss"]) / n}
        for j in levels:
            for k in TOPK:
                out[f"L{j}_top{k}"] = float(sums[f"L{j}_top{k}"]) / n
        return out

    def train_dataset(seed, shard_index, shard_count, batch_size):
        return imc_pipeline.make_train_dataset(
            patch_index, seed=seed, batch_size=batch_size, level=level, crop=crop,
            worker_count=workers, shard_index=shard_index, shard_count=shard_count)

    def val_batches():
        batches = imc_pipeline.make_val_batches(patch_index, seed=12345, n_samples=val_samples,
                                                batch_size=val_batch_size, level=level, crop=crop)
        return [{k: b[k] for k in ("image", "label", "leaf", "weight")} for b in batches]

    def final_report(workdir: Path, summary: dict, sums: dict):
        write_imc_report(workdir, summary, sums, level)

    def default_init(rng):
        return model_lib.init(rng, model_cfg)

    return Task(
        name=f"imc_L{level}",
        model_cfg=model_cfg,
        init_variables=init_variables or default_init,
        optimizer=optax.adam(learning_rate),
        loss=loss,
        eval_sums=eval_sums,
        summarize=summarize,
        train_dataset=train_dataset,
        val_batches=val_batches,
        final_report=final_report,
        settings={"data": None if patch_index is None else patch_index.settings(),
                  "crop": crop, "val_samples": val_samples,
                  "val_batch_size": val_batch_size},
        outputs=("imc_report.json", "imc_report.md", "confusion_L*.png"),
    )


def write_imc_report(outdir, summary: dict, sums: Optional[dict], level: int, prefix: str = "imc_report"):
    """imc_report.json (levels "0".."level", each with classes, top1/3/5/10), a markdown table, and
    the confusion matrix at level 1 as an image."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    report = {"trained_level": level, "val_loss": summary["val_loss"], "n_samples": float(sums["n"]) if sums else None,
              "level_names": taxonomy.LEVEL_NAMES_NOTE, "levels": {}}
    for j in range(level + 1):
        report["levels"][str(j)] = {
            "name": taxonomy.LEVEL_NAMES[j],
            "classes": taxonomy.num_classes(j),
            **{f"top{k}": summary[f"L{j}_top{k}"] for k in TOPK},
        }
    (outdir / f"{prefix}.json").write_text(json.dumps(report, indent=1))
    lines = [f"# IMC validation report (trained at level {level}, {taxonomy.LEVEL_NAMES[level]})", "",
             f"validation loss {summary['val_loss']:.4f}", "",
             "| level | name (paper's) | classes (this taxonomy's) | top-1 % | top-3 % | top-5 % | top-10 % |",
             "|---|---|---|---|---|---|---|"]
    for j, r in report["levels"].items():
        lines.append(f"| {j} | {r['name']} | {r['classes']} | " + " | ".join(f"{100 * r[f'top{k}']:.1f}" for k in TOPK) + " |")
    lines += ["", taxonomy.LEVEL_NAMES_NOTE]
    (outdir / f"{prefix}.md").write_text("\n".join(lines) + "\n")
    if sums is not None and "confusion" in sums:
        j = confusion_level(level)
        plot_confusion(np.asarray(sums["confusion"]), taxonomy.class_names(j), outdir / f"confusion_L{j}.png",
                       title=f"IMC confusion at level {j} ({taxonomy.LEVEL_NAMES[j]}: the paper's name; "
                             f"{taxonomy.num_classes(j)} classes here)")


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
    import textwrap

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
