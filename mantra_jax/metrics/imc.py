"""IMC metrics, shared by the trainer's validation (train/imc.py) and the evaluation of a saved
model (eval/imc_eval.py): `eval_sums` (jit-able weighted sums over a batch of logits; padded
samples weigh 0), `summarize` (shares of the samples), `write_report` (imc_report.json/.md and
the level-1 confusion image)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mantra_jax import provenance
from mantra_jax.imc import taxonomy
from mantra_jax.metrics.plots import plot_confusion

TOPK = (1, 3, 5, 10)
# The seed of the fixed validation set: the trainer's, and evaluate_imc's default.
VAL_SEED = 12345


def confusion_level(level: int) -> int:
    return min(1, level)


def eval_sums(logits_NxC, label_N, leaf_N, weight_N, level: int) -> dict:
    """Weighted sums over a batch: "n", "loss" (cross-entropy at the trained level), "L{j}_top{k}"
    for every level j <= `level` (the truth among the k most probable classes at level j, the
    probabilities summed up the hierarchy) and "confusion" (true x predicted) at level 1."""
    conf_level = confusion_level(level)
    n_conf = taxonomy.num_classes(conf_level)
    probs = jax.nn.softmax(logits_NxC, axis=-1)
    sums = {"n": jnp.sum(weight_N),
            "loss": jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits_NxC, label_N) * weight_N)}
    for j in range(level + 1):
        p = probs @ jnp.asarray(taxonomy.level_matrix(level, j))
        true = jnp.asarray(taxonomy.leaf_to_level(np.arange(taxonomy.LEVEL_SIZES[-1]), j))[leaf_N]
        p_true = jnp.take_along_axis(p, true[:, None], axis=-1)
        rank = jnp.sum(p > p_true, axis=-1)  # classes ranked strictly above the truth
        for k in TOPK:
            sums[f"L{j}_top{k}"] = jnp.sum((rank < k) * weight_N)
        if j == conf_level:
            pred = jnp.argmax(p, -1)
            onehot = lambda a: jax.nn.one_hot(a, n_conf, dtype=jnp.float32)
            sums["confusion"] = (onehot(true) * weight_N[:, None]).T @ onehot(pred)
    return sums


def summarize(sums: dict, level: int) -> dict:
    """"val_loss" and "L{j}_top{k}" (shares of the samples) from the summed `eval_sums`."""
    n = max(float(sums["n"]), 1.0)
    out = {"val_loss": float(sums["loss"]) / n}
    for j in range(level + 1):
        for k in TOPK:
            out[f"L{j}_top{k}"] = float(sums[f"L{j}_top{k}"]) / n
    return out


def write_report(outdir, summary: dict, sums: Optional[dict], level: int, *, run: Optional[dict] = None) -> Path:
    """imc_report.json (levels "0".."level", each with classes, top1/3/5/10), a markdown table, and
    the confusion matrix at level 1 as an image. `run` (an evaluation's description: checkpoint,
    split, seed, ...) goes under "run" in the JSON and below the table; its "split" names the
    samples in the markdown (the trainer's report speaks of validation). Returns the JSON path."""
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
    if run:
        report["run"] = dict(run)
    json_path = outdir / "imc_report.json"
    json_path.write_text(json.dumps(report, indent=1))
    split = run.get("split") if run else None
    title = f"IMC report on the {split} split" if split else "IMC validation report"
    lines = [f"# {title} (trained at level {level}, {taxonomy.LEVEL_NAMES[level]})", "",
             f"{split or 'validation'} loss {summary['val_loss']:.4f}", "",
             "| level | name (paper's) | classes (this taxonomy's) | top-1 % | top-3 % | top-5 % | top-10 % |",
             "|---|---|---|---|---|---|---|"]
    for j, r in report["levels"].items():
        lines.append(f"| {j} | {r['name']} | {r['classes']} | " + " | ".join(f"{100 * r[f'top{k}']:.1f}" for k in TOPK) + " |")
    lines += ["", taxonomy.LEVEL_NAMES_NOTE]
    if run:
        lines += [part for line in provenance.markdown_lines(run) for part in ("", line)]
    (outdir / "imc_report.md").write_text("\n".join(lines) + "\n")
    if sums is not None and "confusion" in sums:
        j = confusion_level(level)
        plot_confusion(np.asarray(sums["confusion"]), taxonomy.class_names(j), outdir / f"confusion_L{j}.png",
                       title=f"IMC confusion at level {j} ({taxonomy.LEVEL_NAMES[j]}: the paper's name; "
                             f"{taxonomy.num_classes(j)} classes here)")
    return json_path
