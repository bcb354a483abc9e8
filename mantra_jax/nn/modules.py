"""Flax Linen modules over the network's pure functions: `Featex` and `ManTraNet`.

    net = ManTraNet(cfg)                                   # any ModelConfig (the IMC head too)
    variables = checkpoint.load_model("weights/ptrain4")[1]  # or net.init(rng, x), or model.init
    logits_NxHxW = net.apply(variables, model.preprocess(rgb_NxHxWx3))

    class Detector(nn.Module):                             # Featex as a backbone of your model
        cfg: ModelConfig
        @nn.compact
        def __call__(self, x_NxHxWx3):
            feat_NxHxWxC = Featex(self.cfg, name="Featex")(x_NxHxWx3)
            return nn.Dense(1)(feat_NxHxWxC.mean(axis=(1, 2)))

Why Linen: a Linen module holds no state; its variables are the plain nested dict
{"params": ..., "batch_stats": ...} that `model.init` returns and every checkpoint of this project
(trained here or converted from the authors' weights) holds. So these modules take those
variables as they are, and give back what `model.apply` and `checkpoint.save_model` take: nothing
is converted either way. Linen is also what most existing Flax research code is written in. An NNX
model takes them through `flax.nnx.bridge.ToNNX(ManTraNet(cfg), rngs=...)`.

No second implementation: `ManTraNet.__call__` is `model.apply` and `Featex.__call__` is
`featex.apply`, over the same parameter pytrees (the modules only declare the variables).
`ManTraNet`'s variables are exactly `model.init`'s: params Featex/b1c1 ..., outlierTrans, glbStd,
cLSTM, pred, and batch_stats bnorm (ManTra-Net), or params Featex and imc (the IMC network).
`Featex`'s params are exactly `model.init(...)["params"]["Featex"]`: b1c1, b1c2, ..., transform.

Fine-tuning: the network has constraints (Bayar filters in b1c1, unit-norm outlierTrans,
non-negative glbStd) that training keeps by a projection after every optimiser update, as the
trainers of this project do. After `optax.apply_updates`, call `ManTraNet(cfg).project(params)`
on the whole params, or `Featex(cfg).project(params["Featex"])` on the Featex part of your model.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mantra_jax.nn import featex, model
from mantra_jax.nn.config import ModelConfig


def _declare_params(module: nn.Module, init_fn: Callable[[Any], dict], names, initial=None) -> dict:
    """Declares each entry `name` of the dict `init_fn(rng)` as one Linen param of `module` (so
    the params collection is that dict itself) and returns {name: value}.

    `initial`: `init_fn`'s result when the caller already has it. At initialisation `init_fn` runs
    at most once; otherwise Linen only evaluates its shapes (jax.eval_shape, nothing computed) to
    check the given params against them."""
    if initial is None and module.is_initializing():
        initial = init_fn(module.make_rng("params"))

    def declare(name):
        return module.param(name, lambda rng: (initial if initial is not None else init_fn(rng))[name])

    return {name: declare(name) for name in names}


class Featex(nn.Module):
    """ManTra-Net's manipulation-trace feature extractor as a Linen module.

    Attributes: `cfg`, the network configuration (mantra_jax.nn.config; `released("Ptrain4")`, a
    checkpoint's, ...); `dtype`, the convolutions' computation dtype (parameters stay float32).
    Input: float32 N x H x W x 3 in [-1, 1] (`model.preprocess` of uint8 RGB), any H, W.
    Output: float32 (or `dtype`) N x H x W x cfg.feature_dim, per-pixel L2-normalised features.
    Params: {"b1c1": ..., "b1c2": ..., ..., "transform": ...}, i.e. a checkpoint's
    variables["params"]["Featex"].
    """

    cfg: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_NxHxWx3):
        names = ["b1c1"] + [name for name, _, _ in featex.layer_names(self.cfg)]
        params = _declare_params(self, lambda rng: featex.init(rng, self.cfg), names)
        return featex.apply(params, jnp.asarray(x_NxHxWx3).astype(self.dtype), self.cfg)

    @nn.nowrap
    def project(self, featex_params: dict) -> dict:
        """The Featex constraint (Bayar filters of b1c1), after each optimiser update: this
        module's params in, projected params out (idempotent; the other layers unchanged)."""
        return model.project({"Featex": featex_params}, self.cfg)["Featex"]


class ManTraNet(nn.Module):
    """The whole network (ManTra-Net, or the IMC network for an IMC configuration) as a Linen
    module whose variables are `model.init`'s and whose forward pass is `model.apply`.

    Attributes: `cfg` and `dtype` as for `Featex`.
    `__call__(x_NxHxWx3, train=False, pooled=False)`: x float32 in [-1, 1] (`model.preprocess`).
    Returns the logits (pre-sigmoid), float32: N x H x W for ManTra-Net; for the IMC network
    N x H x W x classes, or their spatial mean N x classes with `pooled`. With `train`, the batch
    norm uses the batch's statistics and updates the moving ones when "batch_stats" is mutable
    (`net.apply(variables, x, train=True, mutable=["batch_stats"])`), as `model.apply` does.
    """

    cfg: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_NxHxWx3, train: bool = False, pooled: bool = False):
        abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), self.cfg))
        initial = model.init(self.make_rng("params"), self.cfg) if self.is_initializing() else None
        params = _declare_params(self, lambda rng: model.init(rng, self.cfg)["params"], abstract["params"],
                                 initial=None if initial is None else initial["params"])
        stats = {name: self.variable("batch_stats", name, lambda name=name: initial["batch_stats"][name])
                 for name in abstract["batch_stats"]}
        variables = {"params": params, "batch_stats": {name: v.value for name, v in stats.items()}}
        out = model.apply(variables, x_NxHxWx3, self.cfg, train=train, dtype=self.dtype, pooled=pooled)
        if train and self.is_mutable_collection("batch_stats"):
            for name, v in stats.items():
                v.value = out["batch_stats"][name]
        return out["logits"]

    @nn.nowrap
    def project(self, params: dict) -> dict:
        """`model.project`: the constraints after each optimiser update (idempotent)."""
        return model.project(params, self.cfg)
