"""Part 1: the manipulation-trace feature extractor ("Featex"), and the IMC decision head."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mantra_jax.nn import layers
from mantra_jax.nn.config import ModelConfig

_glorot = jax.nn.initializers.glorot_uniform()


def layer_names(cfg: ModelConfig):
    """Names and (in, out) widths of the 3x3 convs after b1c1, in order, then `transform`."""
    names, prev = [], cfg.first_width
    for b, block in enumerate(cfg.widths, start=1):
        for j, width in enumerate(block, start=2 if b == 1 else 1):
            names.append((f"b{b}c{j}", prev, width))
            prev = width
    names.append(("transform", prev, cfg.feature_dim))
    return names


def init(rng, cfg: ModelConfig) -> dict:
    keys = iter(jax.random.split(rng, 64))
    k = cfg.first_kernel
    first = {}
    if cfg.regular_filters:
        first["regular_kernel"] = _glorot(next(keys), (k, k, 3, cfg.regular_filters))
    if cfg.bayar_filters:
        # Positive off-centre taps before the projection: a zero-mean init would make the Bayar
        # normaliser (the sum of the off-centre taps) close to zero and the kernel explode.
        first["bayar_kernel"] = layers.bayar_project(jax.random.uniform(next(keys), (k, k, 3, cfg.bayar_filters)))
    params = {"b1c1": first}
    for name, c_in, c_out in layer_names(cfg):
        params[name] = {"kernel": _glorot(next(keys), (3, 3, c_in, c_out)), "bias": jnp.zeros((c_out,))}
    return params


def first_layer_kernel(params: dict, cfg: ModelConfig):
    """The combined b1c1 kernel [regular | 9 SRM | Bayar], concatenated on the output axis."""
    parts = []
    if cfg.regular_filters:
        parts.append(params["b1c1"]["regular_kernel"])
    if cfg.srm:
        srm = layers.srm_kernels()
        if cfg.first_kernel == 3:
            srm = srm[1:4, 1:4]  # only reachable through a hand-made config; documented as cropped
        parts.append(jnp.asarray(srm))
    if cfg.bayar_filters:
        parts.append(params["b1c1"]["bayar_kernel"])
    return jnp.concatenate(parts, axis=-1)


def apply(params: dict, x_NxHxWx3, cfg: ModelConfig, extent=None):
    """Featex: [-1, 1] RGB -> per-pixel L2-normalised features (N, H, W, feature_dim).

    With an `extent` (h, w) (traced), x is a canvas whose image fills that top-left part, with at
    least first_kernel // 2 spare rows and columns: each layer mirrors the image's bottom and
    right borders into the canvas first (layers.reflect_beyond), so that the image's features are
    those of the image alone; outside it they are meaningless."""

    def conv(x, kernel, bias, activation):
        if extent is not None:
            x = layers.reflect_beyond(x, extent, kernel.shape[0] // 2)
        return layers.symmetric_conv(x, kernel, bias, activation=activation)

    x = conv(x_NxHxWx3, first_layer_kernel(params, cfg), None, "relu")
    for name, c_in, c_out in layer_names(cfg):
        p = params[name]
        if name == "transform":
            x = conv(x, p["kernel"], p["bias"], cfg.transform_activation)
        else:
            y = conv(x, p["kernel"], p["bias"], "relu")
            x = x + y if (cfg.residual and c_in == c_out) else y
    return layers.l2_normalize(x)


def init_imc_head(rng, cfg: ModelConfig) -> dict:
    return {
        "kernel": _glorot(rng, (3, 3, cfg.feature_dim, cfg.num_classes)),
        "bias": jnp.zeros((cfg.num_classes,)),
    }


def imc_head(params: dict, feat_NxHxWxC, extent=None):
    """The IMC decision block: a 3x3 conv to the class count (a class map, the paper's Fig. 3b);
    `extent` as for `apply`."""
    if extent is not None:
        feat_NxHxWxC = layers.reflect_beyond(feat_NxHxWxC, extent, params["kernel"].shape[0] // 2)
    return layers.symmetric_conv(feat_NxHxWxC, params["kernel"], params["bias"])


def imc_head_pooled(params: dict, feat_NxHxWxC):
    """The spatial mean of `imc_head`'s class map, (N, classes), without materialising the map.

    The head is linear, so the mean of its output is the sum over the nine taps of (the mean of the
    correspondingly shifted, symmetrically padded features) @ kernel tap: exact, and it saves the
    N x H x W x classes tensor (1.6 GB for a batch of 64 at 128x128 with 380 classes). A shifted
    window of the padded features counts every pixel once but for its first and last rows or
    columns (twice or not at all), so the nine sums are the features weighted by a row weight and
    a column weight per tap (`_tap_weights`): one pass over the features, forward and backward.
    """
    n, h, w, c = feat_NxHxWxC.shape
    kh, kw = params["kernel"].shape[:2]
    rows, cols = _tap_weights(h, kh), _tap_weights(w, kw)
    sums = jnp.einsum("nhwc,ih,jw->nijc", feat_NxHxWxC.astype(jnp.float32), rows, cols)
    kernel = params["kernel"].astype(jnp.float32)
    return params["bias"].astype(jnp.float32) + jnp.einsum("nijc,ijco->no", sums, kernel) / (h * w)


def _tap_weights(n: int, k: int) -> np.ndarray:
    """(k, n): how often pixel t of an axis of length n falls in the window of kernel tap i, on the
    axis padded symmetrically by k // 2 (numpy 'symmetric': the edge pixel repeated)."""
    r = k // 2
    source = np.pad(np.arange(n), r, mode="symmetric")
    weights = np.zeros((k, n), np.float32)
    for i in range(k):
        np.add.at(weights[i], source[i : i + n], 1.0)
    return weights


def count(cfg: ModelConfig) -> int:
    k = cfg.first_kernel
    n = k * k * 3 * (cfg.regular_filters + cfg.bayar_filters)
    for _, c_in, c_out in layer_names(cfg):
        n += 9 * c_in * c_out + c_out
    return int(n)


def receptive_radius(cfg: ModelConfig) -> int:
    """How many pixels beyond a tile's edge influence its Featex output (for tiled inference)."""
    return cfg.first_kernel // 2 + len(layer_names(cfg))


