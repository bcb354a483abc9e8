"""The assembled network: counts, shapes, variants, constraints, gradients, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mantra_jax.nn import config, featex, ladn, model

TINY = config.make_config(width_scale=0.125)


def test_released_parameter_counts():
    cfg = config.released()
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), cfg))
    assert model.count_params(shapes) == (3_805_078, 3_804_950)
    p = shapes["params"]
    size = lambda t: sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(t))
    per_layer = {
        "b1c1": 525, "b1c2": 4_640, "b2c1": 18_496, "b2c2": 36_928, "b3c1": 73_856,
        "b3c2": 147_584, "b3c3": 147_584, "b4c1": 295_168, "b4c2": 590_080, "b4c3": 590_080,
        "b5c1": 590_080, "b5c2": 590_080, "transform": 590_080,
    }
    for name, n in per_layer.items():
        assert size(p["Featex"][name]) == n, name
    assert size(p["Featex"]) == 3_675_181
    assert size(p["outlierTrans"]) == 16_384
    assert size(p["glbStd"]) == 64
    assert size(p["cLSTM"]) == 112_928
    assert size(p["pred"]) == 393
    assert size(shapes["batch_stats"]) == 128


@pytest.mark.parametrize("variant", ["Ptrain0", "Ptrain1", "Ptrain2", "Ptrain3", "Ptrain4"])
def test_released_variants_count_formula(variant):
    cfg = config.released(variant)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), cfg))
    assert model.count_params(shapes) == model.expected_counts(cfg)


@pytest.mark.parametrize("backbone", config.BACKBONES)
@pytest.mark.parametrize("first_layer", list(config.FIRST_LAYERS))
def test_every_variant_builds(backbone, first_layer):
    cfg = config.make_config(backbone=backbone, first_layer=first_layer, head="imc", num_classes=7)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), cfg))
    assert model.count_params(shapes) == model.expected_counts(cfg)
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 16, 16, 3)), cfg), shapes)
    assert out["logits"].shape == (1, 16, 16, 7)


@pytest.mark.parametrize("shape", [(1, 17, 23), (3, 8, 8), (2, 40, 9)])
def test_any_size_and_range(shape):
    v = model.init(jax.random.key(1), TINY)
    x = jax.random.uniform(jax.random.key(2), shape + (3,), minval=-1, maxval=1)
    logits = model.apply(v, x, TINY)["logits"]
    assert logits.shape == shape
    prob = jax.nn.sigmoid(logits)
    assert np.all(np.isfinite(prob)) and np.all((prob >= 0) & (prob <= 1))


@pytest.mark.parametrize("anomaly,windows", [("tac", (7, 15, 31)), ("df", (7, 15, 31)), ("zf", (7,)),
                                             ("fac", (7,)), ("fac", (7, 15, 31)), ("tac", (7, 15, 31, 63))])
def test_anomaly_variants(anomaly, windows):
    cfg = TINY.replace(anomaly=anomaly, windows=windows)
    v = model.init(jax.random.key(0), cfg)
    assert model.count_params(v) == model.expected_counts(cfg)
    assert model.apply(v, jnp.zeros((1, 12, 10, 3)), cfg)["logits"].shape == (1, 12, 10)


def test_featex_output_is_unit_norm_per_pixel():
    v = model.init(jax.random.key(0), TINY)
    x = jax.random.uniform(jax.random.key(3), (2, 16, 12, 3), minval=-1, maxval=1)
    feat = featex.apply(v["params"]["Featex"], x, TINY)
    norms = np.linalg.norm(np.asarray(feat), axis=-1)
    assert np.all((np.abs(norms - 1) < 1e-4) | (norms == 0))


def test_ladn_matches_numpy_reference():
    """Adaptation, batch norm (inference), Z-scores in the order 7, 15, 31, global."""
    cfg = TINY
    v = model.init(jax.random.key(4), cfg)
    p = jax.tree.map(np.asarray, v["params"])
    stats = {"bnorm": {"moving_mean": np.full((8,), 0.1, np.float32), "moving_variance": np.full((8,), 2.0, np.float32)}}
    feat = np.random.default_rng(0).normal(size=(1, 10, 11, cfg.feature_dim)).astype(np.float32)
    y = feat @ p["outlierTrans"]["kernel"][0, 0]
    y = (y - 0.1) / np.sqrt(2.0 + 1e-3)
    mean = y.mean(axis=(1, 2), keepdims=True)
    std = y.std(axis=(1, 2), keepdims=True)  # population std (ddof 0)
    sigma = np.maximum(std, 1e-6 + p["glbStd"]["min_std"])
    from tests.test_layers import np_window_mean, np_convlstm
    devs = [np_window_mean(y, k) - y for k in (7, 15, 31)] + [mean - y]
    z = np.abs(np.stack(devs, axis=1) / sigma[:, None])
    h = np_convlstm(z, p["cLSTM"]["kernel"], p["cLSTM"]["recurrent_kernel"], p["cLSTM"]["bias"])
    r = 3
    logits = np.einsum("nhwc,co->nhwo", np.zeros((1, 10, 11, 2)), np.zeros((2, 1)))  # shape holder
    from tests.test_layers import np_conv_valid
    logits = np_conv_valid(np.pad(h, ((0, 0), (r, r), (r, r), (0, 0))), p["pred"]["kernel"]) + p["pred"]["bias"]
    got, _ = ladn.apply(v["params"], jax.tree.map(jnp.asarray, stats), jnp.asarray(feat), cfg, train=False)
    np.testing.assert_allclose(got, logits[..., 0], atol=1e-4)


def test_batch_norm_train_updates_moving_stats_and_inference_uses_them():
    v = model.init(jax.random.key(0), TINY)
    x = jax.random.uniform(jax.random.key(5), (2, 12, 12, 3), minval=-1, maxval=1)
    out = model.apply(v, x, TINY, train=True)
    new = out["batch_stats"]["bnorm"]
    assert not np.allclose(new["moving_mean"], v["batch_stats"]["bnorm"]["moving_mean"])
    # Inference is independent of the rest of the batch (no batch statistics).
    a = model.apply(v, x, TINY)["logits"][:1]
    b = model.apply(v, x[:1], TINY)["logits"]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_projection_is_idempotent_and_constrains():
    v = model.init(jax.random.key(0), TINY)
    p = jax.tree.map(lambda a: a + 0.3, v["params"])
    p = jax.tree_util.tree_map_with_path(
        lambda path, a: -jnp.abs(a) if "min_std" in jax.tree_util.keystr(path) else a, p)
    once = model.project(p, TINY)
    twice = model.project(once, TINY)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), once, twice)
    bayar = np.asarray(once["Featex"]["b1c1"]["bayar_kernel"])
    np.testing.assert_allclose(bayar[2, 2], -1)
    np.testing.assert_allclose(bayar.sum(axis=(0, 1)) + 1, 1, atol=1e-5)
    w = np.asarray(once["outlierTrans"]["kernel"]).reshape(-1, TINY.adapt_dim)
    np.testing.assert_allclose(np.linalg.norm(w, axis=0), 1, atol=1e-6)
    assert np.all(np.asarray(once["glbStd"]["min_std"]) >= 0)


def test_gradients_finite_and_no_recompile():
    v = model.init(jax.random.key(0), TINY)
    traces = []

    @jax.jit
    def loss(params, x):
        traces.append(1)
        logits = model.apply({"params": params, "batch_stats": v["batch_stats"]}, x, TINY, train=True)["logits"]
        return jnp.mean(jax.nn.softplus(logits))

    grad = jax.grad(loss)
    x = jax.random.uniform(jax.random.key(6), (2, 16, 16, 3), minval=-1, maxval=1)
    g = grad(v["params"], x)
    assert all(np.all(np.isfinite(a)) for a in jax.tree_util.tree_leaves(g))
    assert any(np.any(a != 0) for a in jax.tree_util.tree_leaves(g["Featex"]))
    n = len(traces)
    grad(v["params"], x + 0.1)
    assert len(traces) == n  # same shape: no retrace


def test_bfloat16_computation_close_to_float32():
    v = model.init(jax.random.key(0), TINY)
    x = jax.random.uniform(jax.random.key(7), (1, 16, 16, 3), minval=-1, maxval=1)
    a = jax.nn.sigmoid(model.apply(v, x, TINY)["logits"])
    b = jax.nn.sigmoid(model.apply(v, x, TINY, dtype=jnp.bfloat16)["logits"])
    assert b.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(a - b))) < 0.05


def test_bad_input_is_named():
    v = model.init(jax.random.key(0), TINY)
    with pytest.raises(ValueError, match="RGB"):
        model.apply(v, jnp.zeros((1, 8, 8, 4)), TINY)
    with pytest.raises(TypeError, match="floats"):
        model.apply(v, jnp.zeros((1, 8, 8, 3), jnp.uint8), TINY)
    other = config.make_config(width_scale=0.25)
    with pytest.raises(ValueError, match="do not match"):
        model.check_variables(v, other)


def test_receptive_radius_bounds_featex_influence():
    """A pixel change influences Featex outputs only within receptive_radius."""
    cfg = TINY
    v = model.init(jax.random.key(0), cfg)
    r = featex.receptive_radius(cfg)
    x = jax.random.uniform(jax.random.key(8), (1, 2 * r + 21, 2 * r + 21, 3), minval=-1, maxval=1)
    c = r + 10
    y = x.at[0, c, c].add(0.5)
    d = np.abs(np.asarray(featex.apply(v["params"]["Featex"], x, cfg) - featex.apply(v["params"]["Featex"], y, cfg))).sum(-1)[0]
    rows = np.nonzero(d.sum(1) > 0)[0]
    assert rows.min() >= c - r and rows.max() <= c + r
    assert rows.min() <= c - r + 2  # and the bound is nearly tight


def test_imc_pooled_logits_equal_mean_of_class_map():
    cfg = TINY.replace(head="imc", num_classes=11)
    v = model.init(jax.random.key(0), cfg)
    x = jax.random.uniform(jax.random.key(9), (2, 13, 17, 3), minval=-1, maxval=1)
    full = model.apply(v, x, cfg)["logits"]
    assert full.shape == (2, 13, 17, 11)
    pooled = model.apply(v, x, cfg, pooled=True)["logits"]
    np.testing.assert_allclose(pooled, full.mean(axis=(1, 2)), atol=1e-5)


@pytest.mark.parametrize("size", [(13, 17), (1, 2), (2, 5)])
def test_pooled_head_value_and_gradient_equal_the_class_map_mean(size):
    """The pooled head (per-tap row and column weights) against the mean of `imc_head`'s class
    map, value and gradient, also where the symmetric padding's first and last rows coincide."""
    params = featex.init_imc_head(jax.random.key(1), TINY.replace(head="imc", num_classes=5))
    params["bias"] = jax.random.normal(jax.random.key(2), params["bias"].shape)
    feat = jax.random.normal(jax.random.key(3), (2, *size, TINY.feature_dim))
    weight = jax.random.normal(jax.random.key(4), (2, 5))
    pooled = lambda p, f: jnp.sum(weight * featex.imc_head_pooled(p, f))
    mapped = lambda p, f: jnp.sum(weight * featex.imc_head(p, f).mean(axis=(1, 2)))
    np.testing.assert_allclose(pooled(params, feat), mapped(params, feat), rtol=1e-5)
    got, expected = (jax.grad(fn, argnums=(0, 1))(params, feat) for fn in (pooled, mapped))
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_initial_bayar_filters_are_well_conditioned():
    """The constrained filters start bounded: no tap anywhere near the explosion of a ~0 normaliser."""
    for seed in range(20):
        v = model.init(jax.random.key(seed), TINY.replace(bayar_filters=3, regular_filters=1))
        k = np.asarray(v["params"]["Featex"]["b1c1"]["bayar_kernel"])
        assert np.abs(k).max() <= 1.0 + 1e-6
