"""Every numerical layer against a straightforward numpy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mantra_jax.nn import layers


def np_conv_valid(x, k):
    """Direct NHWC x HWIO correlation (what TF/JAX call convolution)."""
    n, h, w, c = x.shape
    kh, kw, _, o = k.shape
    out = np.zeros((n, h - kh + 1, w - kw + 1, o))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,co->nhwo", x[:, i : i + h - kh + 1, j : j + w - kw + 1], k[i, j])
    return out


@pytest.mark.parametrize("shape,kernel", [((2, 9, 7), 5), ((1, 13, 11), 5), ((1, 8, 8), 5), ((2, 6, 9), 3),
                                          ((1, 2, 5), 3), ((1, 4, 4), 3), ((1, 9, 7), 1)])
def test_symmetric_conv_matches_numpy(shape, kernel):
    """Both ways of computing it: the padded path (small images) and SAME plus border strips."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape + (3,)).astype(np.float32)
    k = rng.normal(size=(kernel, kernel, 3, 4)).astype(np.float32)
    b = rng.normal(size=(4,)).astype(np.float32)
    r = kernel // 2
    ref = np_conv_valid(np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="symmetric"), k) + b
    got = layers.symmetric_conv(jnp.asarray(x), jnp.asarray(k), jnp.asarray(b))
    assert got.shape == shape + (4,)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    relu = layers.symmetric_conv(jnp.asarray(x), jnp.asarray(k), jnp.asarray(b), activation="relu")
    np.testing.assert_allclose(relu, np.maximum(ref, 0), atol=1e-4)
    tanh = layers.symmetric_conv(jnp.asarray(x), jnp.asarray(k), jnp.asarray(b), activation="tanh")
    np.testing.assert_allclose(tanh, np.tanh(ref), atol=1e-4)


@pytest.mark.parametrize("shape,kernel", [((2, 9, 7), 5), ((1, 13, 11), 5), ((2, 6, 9), 3), ((1, 4, 4), 3)])
@pytest.mark.parametrize("activation", [None, "relu", "tanh"])
def test_symmetric_conv_gradient_matches_the_padded_convolution(shape, kernel, activation):
    """The border strips and the hand-written backward pass of the rectified fill give autodiff's
    gradient of the plain formulation (pad, VALID convolution, activation)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=shape + (3,)).astype(np.float32))
    k = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 4)).astype(np.float32))
    b = jnp.asarray(rng.normal(size=(4,)).astype(np.float32))
    weight = jnp.asarray(rng.normal(size=shape + (4,)).astype(np.float32))  # a loss that weighs every output
    act = layers.ACTIVATIONS[activation]

    def plain(x, k, b):
        return jnp.sum(weight * act(layers.conv(layers.symmetric_pad(x, kernel // 2), k, b)))

    def ours(x, k, b):
        return jnp.sum(weight * layers.symmetric_conv(x, k, b, activation=activation))

    expected = jax.grad(plain, argnums=(0, 1, 2))(x, k, b)
    got = jax.grad(ours, argnums=(0, 1, 2))(x, k, b)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kernel,padding,channels", [(3, "SAME", (3, 4)), (3, "SAME", (64, 128)), (5, "VALID", (64, 128)),
                                                     (7, "SAME", (64, 128)), (1, "VALID", (128, 64)), (4, "SAME", (64, 128))])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_conv_gradients_match_numpy(kernel, padding, channels, dtype):
    """`conv`'s own backward pass (the kernel gradient as one matrix product on a CPU): for
    loss = sum(weight * conv(x, k)), dk[i, j] = sum over pixels of x_padded(shifted by i, j) (x) weight
    and dx is the full correlation of weight with the flipped kernel. Channels (3, 4): XLA's own
    kernel gradient; from layers.PRODUCT_MIN_CHANNELS on, the product."""
    c_in, c_out = channels
    assert (c_in * c_out >= layers.PRODUCT_MIN_CHANNELS) == (c_in > 3)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 9, 7, c_in)).astype(np.float32)
    k = rng.normal(size=(kernel, kernel, c_in, c_out)).astype(np.float32)
    lo = (kernel - 1) // 2 if padding == "SAME" else 0
    hi = kernel - 1 - lo if padding == "SAME" else 0
    xp = np.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    h_out, w_out = xp.shape[1] - kernel + 1, xp.shape[2] - kernel + 1
    weight = rng.normal(size=(2, h_out, w_out, c_out)).astype(np.float32)
    xq = np.asarray(jnp.asarray(x, dtype).astype(jnp.float32))  # what the layer sees
    xqp = np.pad(xq, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    dk = np.stack([np.stack([np.einsum("nhwc,nhwo->co", xqp[:, i : i + h_out, j : j + w_out], weight)
                             for j in range(kernel)]) for i in range(kernel)])
    kq = np.asarray(jnp.asarray(k, dtype).astype(jnp.float32))
    dxp = np.zeros_like(xp)
    for i in range(kernel):
        for j in range(kernel):
            dxp[:, i : i + h_out, j : j + w_out] += np.einsum("nhwo,co->nhwc", weight, kq[i, j])
    dx = dxp[:, lo : lo + x.shape[1], lo : lo + x.shape[2]]

    def loss(x, k):
        return jnp.sum(jnp.asarray(weight) * layers.conv(x, k, padding=padding).astype(jnp.float32))

    got_dx, got_dk = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(x, dtype), jnp.asarray(k))
    tol = 1e-4 if dtype == jnp.float32 else 5e-2
    assert got_dk.shape == k.shape and got_dk.dtype == jnp.float32
    np.testing.assert_allclose(got_dk, dk, rtol=tol, atol=tol * np.abs(dk).max())
    np.testing.assert_allclose(np.asarray(got_dx, np.float32), dx, rtol=tol, atol=tol * np.abs(dx).max())


def test_symmetric_conv_rejects_an_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        layers.symmetric_conv(jnp.zeros((1, 8, 8, 3)), jnp.zeros((3, 3, 3, 2)), activation="gelu")


def test_symmetric_padding_repeats_edge_pixel():
    x = jnp.arange(4.0).reshape(1, 1, 4, 1)
    padded = layers.symmetric_pad(jnp.broadcast_to(x, (1, 3, 4, 1)), 2)
    np.testing.assert_array_equal(padded[0, 2, :, 0], [1, 0, 0, 1, 2, 3, 3, 2])


def test_srm_layout_per_channel():
    k = layers.srm_kernels()
    assert k.shape == (5, 5, 3, 9)
    srm1 = np.zeros((5, 5))
    srm1[1:4, 1:4] = np.array([[-1, 2, -1], [2, -4, 2], [-1, 2, -1]]) / 4
    srm3 = np.zeros((5, 5))
    srm3[2, 1:4] = np.array([1, -2, 1]) / 2
    for c in range(3):
        np.testing.assert_allclose(k[:, :, c, c], srm1)
        np.testing.assert_allclose(k[:, :, c, 6 + c], srm3)
        np.testing.assert_allclose(k[2, 2, c, 3 + c], -1.0)  # -12 / 12
        # Never summed across channels: every other input channel is zero for this output.
        for other in range(3):
            if other != c:
                assert np.all(k[:, :, other, [c, 3 + c, 6 + c]] == 0)
    # High-pass: every SRM kernel sums to zero, so a flat image gives zero response.
    np.testing.assert_allclose(k.sum(axis=(0, 1, 2)), 0, atol=1e-6)


def test_bayar_projection():
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.uniform(0.1, 1, size=(5, 5, 3, 3)).astype(np.float32))
    p = layers.bayar_project(w)
    centre = np.asarray(p[2, 2])
    np.testing.assert_allclose(centre, -1.0)
    off = np.asarray(p).sum(axis=(0, 1)) - centre
    np.testing.assert_allclose(off, 1.0, atol=1e-5)
    np.testing.assert_allclose(layers.bayar_project(p), p, atol=1e-6)  # idempotent
    # numpy reference of the released constraint
    ref = np.array(w)
    ref[2, 2] = 0
    ref = ref / (ref.sum(axis=(0, 1), keepdims=True) + 1e-7)
    ref[2, 2] = -1
    np.testing.assert_allclose(p, ref, rtol=1e-6)


def test_unit_norm_idempotent():
    w = jnp.asarray(np.random.default_rng(2).normal(size=(1, 1, 16, 4)).astype(np.float32))
    u = layers.unit_norm(w)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(u).reshape(16, 4), axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose(layers.unit_norm(u), u, atol=1e-7)


def test_l2_normalize_per_pixel():
    x = np.random.default_rng(3).normal(size=(2, 5, 6, 7)).astype(np.float32)
    x[0, 0, 0] = 0  # the 1e-12 floor keeps a zero pixel at zero, not NaN
    ref = x / np.sqrt(np.maximum((x**2).sum(-1, keepdims=True), 1e-12))
    got = layers.l2_normalize(jnp.asarray(x))
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert np.all(np.asarray(got[0, 0, 0]) == 0)


def np_window_mean(x, k):
    n, h, w, c = x.shape
    r = k // 2
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            win = x[:, max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1]
            out[:, i, j] = win.mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("k", [7, 15, 31, 63])
def test_window_mean_counts_in_image_pixels_only(k):
    # 11 x 20: windows of 15, 31 and 63 are larger than the image in one or both directions.
    x = np.random.default_rng(k).normal(size=(2, 11, 20, 3)).astype(np.float32)
    deviation = layers.window_deviations(jnp.asarray(x), (k,))[:, 0]
    np.testing.assert_allclose(deviation + x, np_window_mean(x, k), atol=2e-6)


def test_window_deviations_order_and_global():
    x = np.random.default_rng(5).normal(size=(1, 9, 8, 2)).astype(np.float32)
    d = np.asarray(layers.window_deviations(jnp.asarray(x), (7, 15, 31), jnp.mean(x, axis=(1, 2), keepdims=True)))
    assert d.shape == (1, 4, 9, 8, 2)
    assert layers.window_deviations(jnp.asarray(x), (7, 15)).shape == (1, 2, 9, 8, 2)  # no global window
    np.testing.assert_allclose(d[:, 0], np_window_mean(x, 7) - x, atol=2e-6)
    np.testing.assert_allclose(d[:, 3], x.mean(axis=(1, 2), keepdims=True) - x, atol=2e-6)
    # On a 9x8 image a 31 window covers everything: equal to the global deviation.
    np.testing.assert_allclose(d[:, 2], d[:, 3], atol=2e-6)


def test_hard_sigmoid_is_keras2():
    x = jnp.array([-3.0, -2.5, 0.0, 1.0, 2.5, 4.0])
    np.testing.assert_allclose(layers.hard_sigmoid(x), [0, 0, 0.5, 0.7, 1, 1], atol=1e-7)


def np_convlstm(x, kernel, rec, bias, gate="hard_sigmoid"):
    """A Python loop over time with the released gate semantics (or logistic gates)."""
    hs = (lambda v: np.clip(0.2 * v + 0.5, 0, 1)) if gate == "hard_sigmoid" else (lambda v: 1 / (1 + np.exp(-v)))
    n, t, h, w, c = x.shape
    f = rec.shape[2]
    r = kernel.shape[0] // 2
    pad = lambda a: np.pad(a, ((0, 0), (r, r), (r, r), (0, 0)))
    hid = np.zeros((n, h, w, f))
    cell = np.zeros((n, h, w, f))
    for step in range(t):
        z = np_conv_valid(pad(x[:, step]), kernel) + bias + np_conv_valid(pad(hid), rec)
        zi, zf, zc, zo = z[..., :f], z[..., f : 2 * f], z[..., 2 * f : 3 * f], z[..., 3 * f :]
        cell = hs(zf) * cell + hs(zi) * np.tanh(zc)
        hid = hs(zo) * np.tanh(cell)
    return hid


@pytest.mark.parametrize("gate", ["hard_sigmoid", "sigmoid"])
def test_convlstm_matches_python_loop(gate):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 4, 8, 9, 3)).astype(np.float32)
    params = {
        "kernel": rng.normal(size=(7, 7, 3, 8), scale=0.3).astype(np.float32),
        "recurrent_kernel": rng.normal(size=(7, 7, 2, 8), scale=0.3).astype(np.float32),
        "bias": rng.normal(size=(8,)).astype(np.float32),
    }
    got = layers.convlstm(jax.tree.map(jnp.asarray, params), jnp.asarray(x), gate=gate)
    ref = np_convlstm(x, params["kernel"], params["recurrent_kernel"], params["bias"], gate)
    assert got.shape == (2, 8, 9, 2)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    other = np_convlstm(x, params["kernel"], params["recurrent_kernel"], params["bias"],
                        "sigmoid" if gate == "hard_sigmoid" else "hard_sigmoid")
    assert np.abs(np.asarray(got) - other).max() > 1e-3  # the gate really is the one asked for
