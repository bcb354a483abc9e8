"""Part 2: the local anomaly detection network (LADN).

adapt -> batch norm -> window deviations -> Z-score against the global std -> ConvLSTM -> 7x7 pred.
The pieces are separate functions so that tiled inference (mantra_jax/nn/tiled.py) can accumulate
the image-wide statistics first and run the local part tile by tile.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mantra_jax.nn import layers
from mantra_jax.nn.config import ModelConfig

_glorot = jax.nn.initializers.glorot_uniform()
_orthogonal = jax.nn.initializers.orthogonal()
MIN_STD_INIT = 1e-5


def init(rng, cfg: ModelConfig):
    """Returns (params, batch_stats)."""
    k_adapt, k_in, k_rec, k_pred = jax.random.split(rng, 4)
    f, kl = cfg.lstm_filters, cfg.lstm_kernel
    lstm_in = cfg.adapt_dim * (cfg.time_steps if cfg.anomaly == "fac" else 1)
    rec = _orthogonal(k_rec, (kl * kl * f, 4 * f)).reshape(kl, kl, f, 4 * f)
    bias = jnp.zeros((4 * f,)).at[f : 2 * f].set(1.0)  # Keras unit_forget_bias
    params = {
        "outlierTrans": {"kernel": layers.unit_norm(_glorot(k_adapt, (1, 1, cfg.feature_dim, cfg.adapt_dim)))},
        "glbStd": {"min_std": jnp.full((cfg.adapt_dim,), MIN_STD_INIT)},
        "cLSTM": {"kernel": _glorot(k_in, (kl, kl, lstm_in, 4 * f)), "recurrent_kernel": rec, "bias": bias},
        "pred": {
            "kernel": _glorot(k_pred, (cfg.pred_kernel, cfg.pred_kernel, f, 1)),
            "bias": jnp.zeros((1,)),
        },
    }
    stats = {"bnorm": {"moving_mean": jnp.zeros((cfg.adapt_dim,)), "moving_variance": jnp.ones((cfg.adapt_dim,))}}
    return params, stats


def adapt(params, stats, feat_NxHxWxC, cfg: ModelConfig, *, train: bool):
    """1x1 unit-norm adaptation, then batch norm without scale or shift (float32 statistics from here on).

    Returns (features, new batch stats or None)."""
    y = layers.conv(feat_NxHxWxC, params["outlierTrans"]["kernel"]).astype(jnp.float32)
    bn = stats["bnorm"]
    if train:
        mean = jnp.mean(y, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(y - mean), axis=(0, 1, 2))
        m = cfg.bn_momentum
        new = {
            "bnorm": {
                "moving_mean": m * bn["moving_mean"] + (1 - m) * jax.lax.stop_gradient(mean),
                "moving_variance": m * bn["moving_variance"] + (1 - m) * jax.lax.stop_gradient(var),
            }
        }
    else:
        mean, var, new = bn["moving_mean"], bn["moving_variance"], None
    return (y - mean) * jax.lax.rsqrt(var + cfg.bn_epsilon), new


def global_moments(y_NxHxWxC):
    """Per-sample, per-channel mean and population (ddof 0) std over H, W."""
    mean = jnp.mean(y_NxHxWxC, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(y_NxHxWxC - mean), axis=(1, 2), keepdims=True)
    return mean, jnp.sqrt(var)


def anomaly_features(params, y_NxHxWxC, global_mean, global_std, cfg: ModelConfig, extent=None):
    """The time-axis anomaly features (N, T, H, W, C) fed to the ConvLSTM.

    `global_mean`/`global_std` are the image-wide moments of `y` (N, 1, 1, C), passed in so that a
    tile can be scored against the whole image. `extent` (h, w): y is a canvas whose image fills
    that top-left part (layers.window_deviations).
    """
    sigma = jnp.maximum(global_std, 1e-6 + params["glbStd"]["min_std"])
    if cfg.anomaly == "zf":
        return jnp.abs((global_mean - y_NxHxWxC) / sigma)[:, None]
    dev = layers.window_deviations(y_NxHxWxC, cfg.windows, global_mean if cfg.use_global else None,
                                   extent)
    if cfg.anomaly == "df":
        return dev
    z = jnp.abs(dev / sigma[:, None])
    if cfg.anomaly == "fac":  # feature-axis concatenation: one ConvLSTM step over all windows
        n, t, h, w, c = z.shape
        return jnp.moveaxis(z, 1, -2).reshape(n, 1, h, w, t * c)
    return z


def decide(params, z_NxTxHxWxC, dtype=jnp.float32, inside=None, gate: str = "hard_sigmoid"):
    """ConvLSTM over the time axis, then the 7x7 prediction: pre-sigmoid float32 logits (N, H, W).

    The convolutions run in `dtype`, the model's computation dtype (the anomaly features before
    them and the ConvLSTM's gates and states are float32): in float32 the ConvLSTM's input
    convolution alone would cost a bfloat16 model about a fifth of its accelerator time.
    `inside` (booleans (1, H, W, 1)): the image's part of a canvas (layers.convlstm), outside
    which the logits are meaningless. `gate`: the ConvLSTM's gate activation (ModelConfig.lstm_gate).
    """
    h = layers.convlstm(params["cLSTM"], z_NxTxHxWxC.astype(dtype), inside, gate=gate)
    pred = layers.conv(h.astype(dtype), params["pred"]["kernel"], params["pred"]["bias"], padding="SAME")
    return jnp.squeeze(pred, axis=-1).astype(jnp.float32)


def apply(params, stats, feat_NxHxWxC, cfg: ModelConfig, *, train: bool):
    """Featex features -> (logits (N, H, W), new batch stats or None)."""
    y, new_stats = adapt(params, stats, feat_NxHxWxC, cfg, train=train)
    mean, std = global_moments(y)
    z = anomaly_features(params, y, mean, std, cfg)
    return decide(params, z, feat_NxHxWxC.dtype, gate=cfg.lstm_gate), new_stats


def count(cfg: ModelConfig) -> tuple[int, int]:
    """(trainable, non-trainable) parameter counts."""
    f, kl = cfg.lstm_filters, cfg.lstm_kernel
    lstm_in = cfg.adapt_dim * (cfg.time_steps if cfg.anomaly == "fac" else 1)
    n = cfg.feature_dim * cfg.adapt_dim + cfg.adapt_dim
    n += kl * kl * lstm_in * 4 * f + kl * kl * f * 4 * f + 4 * f
    n += cfg.pred_kernel**2 * f + 1
    return int(n), 2 * cfg.adapt_dim


def receptive_radius(cfg: ModelConfig) -> int:
    """Pixels beyond a tile edge that influence the local part (windows, ConvLSTM, pred), given the
    image-wide moments: the input of step t (1-based, of T) is seen through its window radius, the
    input convolution and T - t recurrent convolutions, then the prediction's kernel."""
    k = cfg.lstm_kernel // 2
    if cfg.anomaly == "zf":
        radii = [0]
    elif cfg.anomaly == "fac":  # one ConvLSTM step over every window at once
        radii = [max(w // 2 for w in cfg.windows)]
    else:
        radii = [w // 2 for w in cfg.windows] + ([0] if cfg.use_global else [])
    steps = len(radii)
    return int(max(r + (steps - t + 1) * k for t, r in enumerate(radii, start=1)) + cfg.pred_kernel // 2)
