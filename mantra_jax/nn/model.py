"""ManTra-Net as a pair of pure functions over parameter pytrees.

    variables = init(rng, cfg)                       # {"params": ..., "batch_stats": ...}
    out = apply(variables, x, cfg, train=False)      # {"logits": ...} (+ "batch_stats" if train)
    params = project(params, cfg)                    # the constraints, after every update

Parameter keys follow the released Keras model (Featex/b1c1 ... transform, outlierTrans, glbStd,
cLSTM, pred; batch-norm statistics under bnorm), so published weights map onto them mechanically
(mantra_jax/infer/convert.py). The SRM kernels are constants, not parameters.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mantra_jax.nn import featex, ladn, layers
from mantra_jax.nn.config import ModelConfig


@functools.partial(jax.jit, static_argnames=("cfg",))
def init(rng, cfg: ModelConfig) -> dict:
    """New variables of the network `cfg` from a jax.random key: {"params": {"Featex": ...,
    "outlierTrans", "glbStd", "cLSTM", "pred"}, "batch_stats": {"bnorm": ...}} for ManTra-Net,
    {"params": {"Featex", "imc"}, "batch_stats": {}} for the IMC network (float32 arrays; the
    layout of every checkpoint, see the module docstring). Jitted, `cfg` static."""
    k_featex, k_head = jax.random.split(rng)
    params = {"Featex": featex.init(k_featex, cfg)}
    if cfg.head == "imc":
        params["imc"] = featex.init_imc_head(k_head, cfg)
        return {"params": params, "batch_stats": {}}
    head_params, stats = ladn.init(k_head, cfg)
    params.update(head_params)
    return {"params": params, "batch_stats": stats}


def check_input(x):
    """A clear error for inputs the network cannot take (it accepts any H x W and batch size)."""
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected an N x H x W x 3 RGB batch, got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"expected floats in [-1, 1] (see mantra_jax.nn.model.preprocess), got dtype {x.dtype}"
        )


def preprocess(rgb_uint8):
    """8-bit RGB -> the network's input range: rgb / 255 * 2 - 1."""
    return jnp.asarray(rgb_uint8, jnp.float32) * (2.0 / 255.0) - 1.0


@functools.partial(jax.jit, static_argnames=("cfg", "train", "dtype", "pooled"))
def apply(variables: dict, x_NxHxWx3, cfg: ModelConfig, *, train: bool = False, dtype=jnp.float32,
          pooled: bool = False) -> dict:
    """Forward pass. `dtype` is the computation dtype of the convolutions (parameters stay float32;
    the anomaly statistics are always float32).

    Jitted (compiled once per configuration and shapes; inlined into any caller's jit), so that a
    call outside jit, e.g. in a notebook, runs as one program rather than op by op.

    Returns {"logits": (N, H, W)} for ManTra-Net (pre-sigmoid: losses are computed from logits),
    {"logits": (N, H, W, classes)} for the IMC head, or its spatial mean (N, classes) with
    `pooled=True` (what IMC training uses); in training mode also "batch_stats".
    """
    check_input(x_NxHxWx3)
    params = variables["params"]
    feat = featex.apply(params["Featex"], x_NxHxWx3.astype(dtype), cfg)
    if cfg.head == "imc":
        head = featex.imc_head_pooled if pooled else featex.imc_head
        out = {"logits": head(params["imc"], feat).astype(jnp.float32)}
        if train:
            out["batch_stats"] = variables.get("batch_stats", {})
        return out
    logits, new_stats = ladn.apply(params, variables["batch_stats"], feat, cfg, train=train)
    out = {"logits": logits.astype(jnp.float32)}
    if train:
        out["batch_stats"] = new_stats
    return out


def project(params: dict, cfg: ModelConfig) -> dict:
    """The constraints as one projection, applied after each optimiser update (idempotent):
    Bayar on the b1c1 Bayar filters, unit norm on outlierTrans, non-negative std floor."""
    params = dict(params)
    first = dict(params["Featex"]["b1c1"])
    if "bayar_kernel" in first:
        first["bayar_kernel"] = layers.bayar_project(first["bayar_kernel"])
        params["Featex"] = {**params["Featex"], "b1c1": first}
    if "outlierTrans" in params:
        params["outlierTrans"] = {"kernel": layers.unit_norm(params["outlierTrans"]["kernel"])}
    if "glbStd" in params:
        params["glbStd"] = {"min_std": jnp.maximum(params["glbStd"]["min_std"], 0.0)}
    return params


def count_params(variables: dict) -> tuple[int, int]:
    """(total, trainable) numbers of values in a variables pytree."""
    size = lambda tree: int(sum(np.prod(np.shape(a)) for a in jax.tree_util.tree_leaves(tree)))
    trainable = size(variables["params"])
    return trainable + size(variables.get("batch_stats", {})), trainable


def expected_counts(cfg: ModelConfig) -> tuple[int, int]:
    """(total, trainable) from the config alone, by the formulas of architecture.md."""
    n = featex.count(cfg)
    if cfg.head == "imc":
        n += 9 * cfg.feature_dim * cfg.num_classes + cfg.num_classes
        return n, n
    trainable, stats = ladn.count(cfg)
    return n + trainable + stats, n + trainable


class VariablesMismatch(ValueError):
    """A variables pytree (e.g. a restored checkpoint) of another model configuration."""


def check_variables(variables: dict, cfg: ModelConfig, what: str = "variables"):
    """Raises a clear error when a pytree (e.g. a restored checkpoint) does not fit `cfg`."""
    expected = jax.eval_shape(lambda: init(jax.random.key(0), cfg))
    exp = {jax.tree_util.keystr(p): tuple(a.shape) for p, a in jax.tree_util.tree_leaves_with_path(expected)}
    got = {jax.tree_util.keystr(p): tuple(np.shape(a)) for p, a in jax.tree_util.tree_leaves_with_path(variables)}
    missing = sorted(set(exp) - set(got))
    extra = sorted(set(got) - set(exp))
    wrong = sorted(k for k in set(exp) & set(got) if exp[k] != got[k])
    if missing or extra or wrong:
        lines = [f"{what} do not match the model configuration:"]
        lines += [f"  missing {k} {exp[k]}" for k in missing[:10]]
        lines += [f"  unexpected {k} {got[k]}" for k in extra[:10]]
        lines += [f"  {k}: expected shape {exp[k]}, got {got[k]}" for k in wrong[:10]]
        raise VariablesMismatch("\n".join(lines))
