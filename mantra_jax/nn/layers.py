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
# Input x output channels from which a convolution's kernel gradient is `_kernel_gradient`'s
# product on a CPU. Forward and backward of a 3x3 layer at 4 x 128 x 128 with XLA's kernel
# gradient against the product: 64->64 0.17 against 0.21 s, 64->128 0.68 against 0.31 s,
# 128->128 1.14 against 0.57 s (benchmarks/README.md, "CPU speed").
PRODUCT_MIN_CHANNELS = 64 * 128


def conv(x_NxHxWxC, kernel_HWIO, bias=None, *, padding="VALID"):
    """Stride-1 2-D convolution (NHWC, HWIO), computed in the input's dtype. From
    PRODUCT_MIN_CHANNELS on, its kernel gradient is `_kernel_gradient`'s (one matrix product on a
    CPU)."""
    kernel = kernel_HWIO.astype(x_NxHxWxC.dtype)
    wide = kernel_HWIO.shape[2] * kernel_HWIO.shape[3] >= PRODUCT_MIN_CHANNELS
    y = (_conv if wide else _xla_conv)(x_NxHxWxC, kernel, padding)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y


def _xla_conv(x, kernel, padding):
    return jax.lax.conv_general_dilated(x, kernel, window_strides=(1, 1), padding=padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, kernel, padding):
    return _xla_conv(x, kernel, padding)


def _conv_forward(x, kernel, padding):
    return _xla_conv(x, kernel, padding), (x, kernel)


def _conv_backward(padding, saved, g):
    x, kernel = saved
    _, input_vjp = jax.vjp(lambda x: _xla_conv(x, kernel, padding), x)
    return input_vjp(g)[0], _kernel_gradient(x, g, kernel.shape, padding)


_conv.defvjp(_conv_forward, _conv_backward)


def _kernel_gradient(x, g, kernel_shape, padding):
    """d(loss)/d(kernel) of `_xla_conv` for the output cotangent `g`.

    On a CPU, as one matrix product: the kw column-shifted copies of the padded input side by side
    (N H' w_out, kw C_in) against the kh row-shifted, zero-padded copies of g (N H' w_out,
    kh C_out); block (j, i) of the (kw C_in, kh C_out) product is kernel tap (i, j). XLA's CPU
    backend runs the convolution that autodiff derives for this gradient (batch-contracting, with
    an image-sized window) at a fifth of its matrix-product rate: 3.6 s for a 3x3 256->256 layer
    on 4 x 128 x 128 against 0.63 s as this product (benchmarks/README.md). Other platforms keep
    autodiff's convolution, which their libraries (cuDNN) do well.
    """
    def by_product(x, g):
        kh, kw, c_in, c_out = kernel_shape
        (top, bottom), (left, _) = jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), (1, 1), padding)
        width, w_out = x.shape[2], g.shape[2]

        def column_shift(j):  # columns [j - left, j - left + w_out) of x, zero outside it
            start, stop = max(j - left, 0), min(j - left + w_out, width)
            before = max(left - j, 0)
            part = jax.lax.slice_in_dim(x, start, stop, axis=2)
            return jnp.pad(part, ((0, 0), (top, bottom), (before, w_out - before - (stop - start)), (0, 0)))

        # Stacked, not concatenated, and each shift padded by itself: XLA's CPU backend then
        # writes them in one parallel pass straight from x.
        cols = jnp.stack([column_shift(j) for j in range(kw)], axis=3)
        rows = jnp.stack([jnp.pad(g, ((0, 0), (i, kh - 1 - i), (0, 0), (0, 0))) for i in range(kh)], axis=3)
        product = cols.reshape(-1, kw * c_in).T @ rows.reshape(-1, kh * c_out)
        return product.reshape(kw, c_in, kh, c_out).transpose(2, 0, 1, 3).astype(g.dtype)

    def by_autodiff(x, g):
        return jax.vjp(lambda k: _xla_conv(x, k, padding), jnp.zeros(kernel_shape, x.dtype))[1](g)[0]

    return jax.lax.platform_dependent(x, g, cpu=by_product, default=by_autodiff)


def symmetric_pad(x_NxHxWxC, radius: int):
    """Pads H and W by `radius`, mirroring and repeating the edge pixel (numpy/TF 'symmetric')."""
    if radius == 0:
        return x_NxHxWxC
    return jnp.pad(x_NxHxWxC, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="symmetric")


def reflect_beyond(x_NxHxWxC, extent, radius: int):
    """A canvas whose image fills its top-left `extent` (h, w) (traced int32 scalars), with rows
    [h, h + radius) and then columns [w, w + radius) overwritten by the mirror of the `radius`
    rows and columns before them: what symmetric padding reads at the image's own bottom and
    right borders. A symmetric convolution of the result equals, on the image, the convolution
    of the image alone, so that one compiled program serves every image size up to the canvas
    (mantra_jax/nn/tiled.py). The canvas must have `radius` spare rows and columns beyond the
    extent, and the extent at least `radius` of each."""
    if radius == 0:
        return x_NxHxWxC
    height, width = extent
    rows = jnp.flip(jax.lax.dynamic_slice_in_dim(x_NxHxWxC, height - radius, radius, axis=1), axis=1)
    x = jax.lax.dynamic_update_slice_in_dim(x_NxHxWxC, rows, height, axis=1)
    cols = jnp.flip(jax.lax.dynamic_slice_in_dim(x, width - radius, radius, axis=2), axis=2)
    return jax.lax.dynamic_update_slice_in_dim(x, cols, width, axis=2)


def extent_mask(shape, extent):
    """(1, H, W, 1) booleans of an (H, W) canvas: True inside the image of `extent` (h, w)."""
    rows = jnp.arange(shape[0]) < extent[0]
    cols = jnp.arange(shape[1]) < extent[1]
    return (rows[:, None] & cols[None, :])[None, :, :, None]


ACTIVATIONS = {None: lambda y: y, "relu": jax.nn.relu, "tanh": jnp.tanh}


def symmetric_conv(x_NxHxWxC, kernel_HWIO, bias=None, activation=None):
    """The Featex convolution: symmetric padding by r = k//2, a VALID convolution, then
    `activation` (None, "relu" or "tanh").

    Computed without a padded copy of the input. Zero and symmetric padding give the same outputs
    everywhere but within r pixels of the border, so the bulk comes from one zero-padded ("SAME")
    convolution, whose padding accelerator kernels do for free and into which XLA fuses the bias
    and the activation; the border band is recomputed exactly from four thin, symmetrically padded
    strips and written over it in place. (Padding first costs a full read and write of every
    layer's input: a third of the memory traffic of the whole network on an H100, see
    benchmarks/xla_traffic.py.) Images too small for the strips take the padded path.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(map(str, ACTIVATIONS))}")
    r = kernel_HWIO.shape[0] // 2
    _, height, width, _ = x_NxHxWxC.shape
    if r == 0 or height < 4 * r or width < 4 * r:  # (not min(): symbolic shapes, jax.export)
        return ACTIVATIONS[activation](conv(symmetric_pad(x_NxHxWxC, r), kernel_HWIO, bias))

    def band(strip, pads):  # a strip of 2r rows or columns plus its symmetric padding
        return conv(jnp.pad(strip, ((0, 0),) + pads + ((0, 0),), mode="symmetric"), kernel_HWIO, bias)

    x = x_NxHxWxC
    strip = functools.partial(jax.lax.slice_in_dim, x)  # (not x[:, a:b]: a gather on symbolic shapes)
    parts = (
        conv(x, kernel_HWIO, bias, padding="SAME"),
        band(strip(0, 2 * r, axis=1), ((r, 0), (r, r))),  # rows [0, r)
        band(strip(height - 2 * r, height, axis=1), ((0, r), (r, r))),  # rows [height - r, height)
        band(strip(0, 2 * r, axis=2), ((r, r), (r, 0))),  # columns [0, r)
        band(strip(width - 2 * r, width, axis=2), ((r, r), (0, r))),  # columns [width - r, width)
    )
    if activation == "relu":
        return _rectified_border_fill(r, *parts)
    return _border_fill(r, *(ACTIVATIONS[activation](p) for p in parts))


def _border_fill(r, interior, top, bottom, left, right):
    """`interior` with its outer band of r pixels replaced: rows by top/bottom, then columns (and
    so the corners) by left/right. In-place updates (what XLA makes of `.at[...].set` here anyway;
    written out, they stay updates of slices on symbolic shapes too, see mantra_jax/infer/export.py)."""
    height, width = interior.shape[1:3]
    put = jax.lax.dynamic_update_slice
    y = put(put(interior, top, (0, 0, 0, 0)), bottom, (0, height - r, 0, 0))
    return put(put(y, left, (0, 0, 0, 0)), right, (0, 0, width - r, 0))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _rectified_border_fill(r, interior, top, bottom, left, right):
    """_border_fill of the rectified parts, differentiated from its output (y > 0).

    The same derivative as autodiff's, but the backward pass then needs only the layer's output,
    which the next layer keeps anyway: XLA fuses the rectifier into the convolutions in training
    as in inference, instead of keeping the pre-activation and rectifying in a pass of its own.
    (A custom VJP: reverse mode only, which is all that training uses.)
    """
    return _border_fill(r, *(jnp.maximum(p, 0) for p in (interior, top, bottom, left, right)))


def _rectified_border_fill_forward(r, *parts):
    y = _rectified_border_fill(r, *parts)
    return y, y


def _rectified_border_fill_backward(r, y, g):
    g = jnp.where(y > 0, g, jnp.zeros_like(g))
    height, width = g.shape[1:3]

    def without_corners(rows):  # the corners came from the columns, written last
        return rows.at[:, :, :r].set(0).at[:, :, width - r :].set(0)

    zero_rows, zero_cols = jnp.zeros_like(g[:, :r]), jnp.zeros_like(g[:, :, :r])
    interior = _border_fill(r, g, zero_rows, zero_rows, zero_cols, zero_cols)
    return (interior, without_corners(g[:, :r]), without_corners(g[:, height - r :]), g[:, :, :r],
            g[:, :, width - r :])


_rectified_border_fill.defvjp(_rectified_border_fill_forward, _rectified_border_fill_backward)


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
def _integral_image(x_NxHxWxC):
    """Exclusive 2-D prefix sums, (N, H + 1, W + 1, C): I[i, j] = sum of x[:i, :j]."""
    csum = jnp.cumsum(jnp.cumsum(x_NxHxWxC, axis=1), axis=2)
    return jnp.pad(csum, ((0, 0), (1, 0), (1, 0), (0, 0)))


def _clipped_ends(prefix, axis: int, radius: int):
    """prefix[min(i + r + 1, n)] and prefix[max(i - r, 0)] for i in [0, n), as shifted slices of
    a prefix array of length n + 1 along `axis` (edge-padded; zero where a window is clipped at
    the start, since prefix[0] = 0), never as a gather, whose gradient would be a scatter-add."""
    n, r = prefix.shape[axis] - 1, radius
    pad = [(0, 0)] * prefix.ndim
    upper = jax.lax.slice_in_dim(prefix, min(r + 1, n), n + 1, axis=axis)
    pad[axis] = (0, n - upper.shape[axis])
    upper = jnp.pad(upper, pad, mode="edge")
    lower = jax.lax.slice_in_dim(prefix, 0, max(n - r, 0), axis=axis)
    pad[axis] = (n - lower.shape[axis], 0)
    return upper, jnp.pad(lower, pad)


def _window_means(integral, k: int, extent=None):
    """Centred k x k means over in-image pixels from an integral image: four corners per pixel.
    With an `extent` (h, w), the image fills that top-left part of the canvas (whose values
    outside it are zero) and only its pixels are counted; outside it the means are meaningless."""
    r = k // 2
    rows_hi, rows_lo = _clipped_ends(integral, 1, r)
    sums = [_clipped_ends(rows, 2, r) for rows in (rows_hi, rows_lo)]
    total = (sums[0][0] - sums[0][1]) - (sums[1][0] - sums[1][1])
    counts = []  # in-image pixels per window, exact integers (jnp, not np: symbolic shapes export)
    for axis, n in enumerate(integral.shape[1:3]):
        i = jnp.arange(n - 1)
        last = n - 2 if extent is None else extent[axis] - 1
        counts.append(jnp.maximum(jnp.minimum(i + r, last) + 1 - jnp.maximum(i - r, 0), 1))
    return total / (counts[0][:, None] * counts[1][None, :]).astype(jnp.float32)[None, :, :, None]


def window_deviations(x_NxHxWxC, windows, global_mean=None, extent=None):
    """avg_k(x) - x for each window k, then global_mean - x if given: (N, T, H, W, C) in that order.

    avg_k is the centred k x k mean over in-image pixels only (average pooling, stride 1, SAME,
    padding not counted), for any k, including windows larger than the image. `global_mean`
    (N, 1, 1, C) is passed in rather than taken from x so that a tile can be scored against the
    whole image. All windows share one integral image (O(1) per pixel whatever k;
    `lax.reduce_window` compiles very slowly for large windows) of x centred on that mean: the
    deviations do not depend on the centre, the small prefix sums keep float32 exact, and an
    accelerator computes every deviation in one pass over it. With an `extent` (h, w), x is a
    canvas whose image fills that top-left part (reflect_beyond): windows count the image's
    pixels only, as on the image alone; outside it the deviations are meaningless (finite).
    """
    x = x_NxHxWxC.astype(jnp.float32)
    if extent is not None:
        inside = extent_mask(x.shape[1:3], extent)
        x = jnp.where(inside, x, 0.0)
    if global_mean is not None:
        centre = global_mean
    elif extent is None:
        centre = jnp.mean(x, axis=(1, 2), keepdims=True)
    else:
        centre = jnp.sum(x, axis=(1, 2), keepdims=True) / (extent[0] * extent[1]).astype(jnp.float32)
    centred = x - centre
    if extent is not None:
        centred = jnp.where(inside, centred, 0.0)
    integral = _integral_image(centred)
    devs = [_window_means(integral, k, extent) - centred for k in windows]
    if global_mean is not None:
        devs.append(-centred)
    return jnp.stack(devs, axis=1)


# --------------------------------------------------------------------------------------------
# ConvLSTM (Keras 2.2 semantics of the released model)
# --------------------------------------------------------------------------------------------
def hard_sigmoid(x):
    """Keras 2 hard sigmoid: clip(0.2 x + 0.5, 0, 1)."""
    return jnp.clip(0.2 * x + 0.5, 0.0, 1.0)


def convlstm_cell(recurrent_kernel, carry, xz_t, inside=None, gate=hard_sigmoid):
    """One ConvLSTM step. `xz_t` is the input convolution (with bias) of x_t, precomputed for every
    step at once; gates are 4 blocks of F channels in the order i, f, c, o. `inside` (booleans
    (1, H, W, 1)): the image's part of a canvas; the hidden state is zero outside it, as the
    recurrent convolution's zero padding sees it at the image's border."""
    h, c = carry
    z = xz_t.astype(jnp.float32) + conv(h.astype(xz_t.dtype), recurrent_kernel, padding="SAME").astype(jnp.float32)
    z_i, z_f, z_c, z_o = jnp.split(z, 4, axis=-1)
    i, f, o = gate(z_i), gate(z_f), gate(z_o)
    c = f * c + i * jnp.tanh(z_c)
    h = o * jnp.tanh(c)
    if inside is not None:
        h = jnp.where(inside, h, 0.0)
    return (h, c), h


def convlstm(params, x_NxTxHxWxC, inside=None, gate: str = "hard_sigmoid"):
    """ConvLSTM over the time axis, returning the last hidden state (N, H, W, F), float32. With
    `inside` (booleans (1, H, W, 1), see `convlstm_cell`) the image fills that part of a canvas:
    the input is zero outside it, the hidden state too (the zero padding of the image alone).

    The convolutions run in the input's dtype; the gates and the cell and hidden states are
    float32 whatever it is. `gate`: the i, f, o gates' activation, "hard_sigmoid" (Keras 2's, the
    released model's) or "sigmoid".

    Run by `lax.scan` fully unrolled: with at most five steps unrolling costs nothing and a rolled
    loop makes the backward convolutions take a much slower path on CPU.
    """
    n, t, h, w, c = x_NxTxHxWxC.shape
    if inside is not None:
        x_NxTxHxWxC = jnp.where(inside[:, None], x_NxTxHxWxC, jnp.zeros((), x_NxTxHxWxC.dtype))
    kernel = params["kernel"]
    f = kernel.shape[-1] // 4
    # The input convolution does not depend on the carry: one batched convolution for all steps.
    xz = conv(x_NxTxHxWxC.reshape(n * t, h, w, c), kernel, params["bias"], padding="SAME")
    xz = jnp.moveaxis(xz.reshape(n, t, h, w, 4 * f), 1, 0)
    # The carry is made from the input (not jnp.zeros) so that it inherits the batch sharding.
    # (Slices, not xz[0, ..., :f]: basic indexing is a gather on symbolic shapes, see jax.export.)
    zero = jnp.zeros_like(jax.lax.index_in_dim(jax.lax.slice_in_dim(xz, 0, f, axis=4), 0, keepdims=False),
                          dtype=jnp.float32)
    gates = {"hard_sigmoid": hard_sigmoid, "sigmoid": jax.nn.sigmoid}
    if gate not in gates:
        raise ValueError(f"gate must be one of {sorted(gates)}, got {gate!r}")
    cell = functools.partial(convlstm_cell, params["recurrent_kernel"], inside=inside, gate=gates[gate])
    (h_last, _), _ = jax.lax.scan(cell, (zero, zero), xz, unroll=True)
    return h_last
