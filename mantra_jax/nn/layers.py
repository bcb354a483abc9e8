"""Numerical building blocks of ManTra-Net, as pure functions on NHWC arrays.

Each function here has a straightforward numpy reference in tests/test_layers.py.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


# --------------------------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------------------------
def conv(x_NxHxWxC, kernel_HWIO, bias=None, *, padding="VALID"):
    """Stride-1 2-D convolution (NHWC, HWIO), computed in the input's dtype."""
    y = jax.lax.conv_general_dilated(
        x_NxHxWxC,
        kernel_HWIO.astype(x_NxHxWxC.dtype),
        window_strides=(1, 1),
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y


def symmetric_pad(x_NxHxWxC, radius: int):
    """Pads H and W by `radius`, mirroring and repeating the edge pixel (numpy/TF 'symmetric')."""
    if radius == 0:
        return x_NxHxWxC
    return jnp.pad(x_NxHxWxC, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="symmetric")


def symmetric_conv(x_NxHxWxC, kernel_HWIO, bias=None):
    """The Featex convolution: symmetric padding by k//2, then a VALID convolution."""
    k = kernel_HWIO.shape[0]
    return conv(symmetric_pad(x_NxHxWxC, k // 2), kernel_HWIO, bias)


# --------------------------------------------------------------------------------------------
# First-layer filters
# --------------------------------------------------------------------------------------------
def srm_kernels() -> np.ndarray:
    """The 9 fixed SRM high-pass filters, (5, 5, 3, 9) HWIO.

    Three 5x5 kernels, each applied to each colour channel separately (never summed across
    channels): output channel 3*s + c is SRM kernel s on colour channel c.
    """
    srm1 = np.zeros((5, 5), np.float32)
    srm1[1:4, 1:4] = np.array([[-1, 2, -1], [2, -4, 2], [-1, 2, -1]], np.float32)
    srm1 /= 4.0
    srm2 = np.array(
        [[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]],
        np.float32,
    ) / 12.0
    srm3 = np.zeros((5, 5), np.float32)
    srm3[2, 1:4] = np.array([1, -2, 1], np.float32)
    srm3 /= 2.0
    kernel = np.zeros((5, 5, 3, 9), np.float32)
    for s, srm in enumerate((srm1, srm2, srm3)):
        for c in range(3):
            kernel[:, :, c, 3 * s + c] = srm
    return kernel


def bayar_project(kernel_HWIO):
    """Bayar's constraint, per (input, output) slice: centre -1, off-centre taps summing to 1.

    Idempotent (to float rounding): applying it to constrained weights changes nothing.
    """
    k = kernel_HWIO.shape[0]
    c = k // 2
    centre_mask = jnp.zeros((k, k, 1, 1), kernel_HWIO.dtype).at[c, c].set(1.0)
    off = kernel_HWIO * (1.0 - centre_mask)
    off = off / (jnp.sum(off, axis=(0, 1), keepdims=True) + 1e-7)
    return off - centre_mask


def unit_norm(kernel, axis=(0, 1, 2)):
    """Keras `unit_norm`: w / (1e-7 + ||w||) with the norm over every axis but the output one."""
    return kernel / (1e-7 + jnp.sqrt(jnp.sum(jnp.square(kernel), axis=axis, keepdims=True)))


def l2_normalize(x_NxHxWxC):
    """Per-pixel L2 normalisation over channels: x / sqrt(max(sum(x^2), 1e-12))."""
    sq = jnp.sum(jnp.square(x_NxHxWxC.astype(jnp.float32)), axis=-1, keepdims=True)
    return (x_NxHxWxC * jax.lax.rsqrt(jnp.maximum(sq, 1e-12)).astype(x_NxHxWxC.dtype))


# --------------------------------------------------------------------------------------------
# Local statistics
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _box_indices(n: int, radius: int):
    """Start/stop rows of centred windows clipped to [0, n), for an exclusive prefix sum."""
    i = np.arange(n)
    lo = np.maximum(i - radius, 0)
    hi = np.minimum(i + radius, n - 1) + 1
    return lo.astype(np.int32), hi.astype(np.int32), (hi - lo).astype(np.float32)


def _box_sum_axis(x, axis: int, radius: int):
    n = x.shape[axis]
    lo, hi, count = _box_indices(n, radius)
    csum = jnp.cumsum(x, axis=axis)
    zero = jnp.zeros_like(jax.lax.slice_in_dim(csum, 0, 1, axis=axis))
    csum = jnp.concatenate([zero, csum], axis=axis)  # exclusive prefix: csum[i] = sum(x[:i])
    return jnp.take(csum, hi, axis=axis) - jnp.take(csum, lo, axis=axis), count


def window_mean(x_NxHxWxC, k: int):
    """Centred k x k mean over in-image pixels only (average pooling, stride 1, SAME, padding not
    counted), for any k, including windows larger than the image.

    Computed from prefix sums (separable, O(1) per pixel whatever k): `lax.reduce_window` compiles
    very slowly for large windows and runs slower on CPU.
    """
    r = k // 2
    x = x_NxHxWxC.astype(jnp.float32)
    s, count_h = _box_sum_axis(x, 1, r)
    s, count_w = _box_sum_axis(s, 2, r)
    count = jnp.asarray(np.outer(count_h, count_w)[None, :, :, None])
    return s / count


def window_deviations(x_NxHxWxC, windows, use_global=True):
    """avg_k(x) - x for each window k, then mean_HW(x) - x: (N, T, H, W, C) in that order."""
    devs = [window_mean(x_NxHxWxC, k) - x_NxHxWxC for k in windows]
    if use_global:
        devs.append(jnp.mean(x_NxHxWxC, axis=(1, 2), keepdims=True) - x_NxHxWxC)
    return jnp.stack(devs, axis=1)


# --------------------------------------------------------------------------------------------
# ConvLSTM (Keras 2.2 semantics of the released model)
# --------------------------------------------------------------------------------------------
def hard_sigmoid(x):
    """Keras 2 hard sigmoid: clip(0.2 x + 0.5, 0, 1)."""
    return jnp.clip(0.2 * x + 0.5, 0.0, 1.0)


def convlstm_cell(recurrent_kernel, carry, xz_t):
    """One ConvLSTM step. `xz_t` is the input convolution (with bias) of x_t, precomputed for every
    step at once; gates are 4 blocks of F channels in the order i, f, c, o."""
    h, c = carry
    z = xz_t + conv(h, recurrent_kernel, padding="SAME")
    z_i, z_f, z_c, z_o = jnp.split(z, 4, axis=-1)
    i, f, o = hard_sigmoid(z_i), hard_sigmoid(z_f), hard_sigmoid(z_o)
    c = f * c + i * jnp.tanh(z_c)
    h = o * jnp.tanh(c)
    return (h, c), h


def convlstm(params, x_NxTxHxWxC):
    """ConvLSTM over the time axis, returning the last hidden state (N, H, W, F).

    Run by `lax.scan` fully unrolled: with at most five steps unrolling costs nothing and a rolled
    loop makes the backward convolutions take a much slower path on CPU.
    """
    n, t, h, w, c = x_NxTxHxWxC.shape
    kernel = params["kernel"]
    f = kernel.shape[-1] // 4
    # The input convolution does not depend on the carry: one batched convolution for all steps.
    xz = conv(x_NxTxHxWxC.reshape(n * t, h, w, c), kernel, params["bias"], padding="SAME")
    xz = jnp.moveaxis(xz.reshape(n, t, h, w, 4 * f), 1, 0)
    # The carry is made from the input (not jnp.zeros) so that it inherits the batch sharding.
    zero = jnp.zeros_like(xz[0, ..., :f])
    cell = functools.partial(convlstm_cell, params["recurrent_kernel"])
    (h_last, _), _ = jax.lax.scan(cell, (zero, zero), xz, unroll=True)
    return h_last
