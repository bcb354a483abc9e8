"""The Flax Linen modules (mantra_jax/nn/modules.py): the same variables as model.init, the same
outputs as model.apply, and fine-tuning of Featex inside a user's Flax model."""
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mantra_jax import checkpoint
from mantra_jax.infer import convert
from mantra_jax.nn import config, featex, model
from mantra_jax.nn.modules import Featex, ManTraNet
from tests.test_convert import random_variables, write_keras_file

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


def _shapes(tree):
    return jax.tree.map(jnp.shape, tree)


def _image(n=2, h=32, w=40, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, h, w, 3)).astype(np.float32)


@pytest.mark.parametrize("name", ["mantranet_small", "imc_small"])
def test_modules_compute_model_apply_on_the_shipped_checkpoints(name):
    cfg, variables = checkpoint.load_model(CHECKPOINTS / name)
    x = _image()
    net = ManTraNet(cfg)
    np.testing.assert_array_equal(np.asarray(net.apply(variables, x)),
                                  np.asarray(model.apply(variables, x, cfg)["logits"]))
    featex_params = variables["params"]["Featex"]
    feats = jax.jit(Featex(cfg).apply)({"params": featex_params}, x)
    assert feats.shape == (2, 32, 40, cfg.feature_dim)
    np.testing.assert_array_equal(np.asarray(feats),
                                  np.asarray(jax.jit(lambda p, x: featex.apply(p, x, cfg))(featex_params, x)))
    # The modules' own initialisation gives the same pytree as model.init (the IMC network's empty
    # batch_stats is a collection Linen leaves out).
    initialised = jax.eval_shape(net.init, jax.random.key(1), x)
    assert _shapes(initialised["params"]) == _shapes(variables["params"])
    assert _shapes(initialised.get("batch_stats", {})) == _shapes(variables["batch_stats"])
    assert _shapes(jax.eval_shape(Featex(cfg).init, jax.random.key(2), x)["params"]) == _shapes(featex_params)


def test_training_mode_updates_the_batch_statistics_as_model_apply_does():
    cfg, variables = checkpoint.load_model(CHECKPOINTS / "mantranet_small")
    x = _image(seed=3)
    logits, updated = ManTraNet(cfg).apply(variables, x, train=True, mutable=["batch_stats"])
    expected = model.apply(variables, x, cfg, train=True)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(expected["logits"]))
    for a, b in zip(jax.tree.leaves(updated["batch_stats"]), jax.tree.leaves(expected["batch_stats"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(updated["batch_stats"]["bnorm"]["moving_mean"],
                              variables["batch_stats"]["bnorm"]["moving_mean"])


def test_a_converted_released_model_runs_in_the_module_unchanged(tmp_path):
    cfg = config.released("Ptrain4")
    h5 = write_keras_file(tmp_path / "weights.h5", random_variables(cfg, seed=0))
    convert.convert(h5, tmp_path / "converted", variant="Ptrain4")
    loaded_cfg, variables = checkpoint.load_model(tmp_path / "converted")
    assert loaded_cfg == cfg
    x = _image(n=1, h=24, w=24, seed=4)
    got = np.asarray(ManTraNet(cfg).apply(variables, x))
    assert got.shape == (1, 24, 24) and np.all(np.isfinite(got))
    np.testing.assert_array_equal(got, np.asarray(model.apply(variables, x, cfg)["logits"]))


def test_module_variables_save_and_load_as_a_checkpoint(tmp_path):
    cfg = checkpoint.read_model_config(CHECKPOINTS / "mantranet_small")
    variables = ManTraNet(cfg).init(jax.random.key(5), _image())  # the shapes model.apply compiled for above
    checkpoint.save_model(tmp_path / "ckpt", cfg, variables)
    _, loaded = checkpoint.load_model(tmp_path / "ckpt")
    assert jax.tree.structure(loaded) == jax.tree.structure(jax.tree.map(np.asarray, variables))
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class NoiseDetector(nn.Module):
    """A user's model: the IMC model's Featex as a backbone, a new image-level head."""

    cfg: config.ModelConfig

    @nn.compact
    def __call__(self, x_NxHxWx3):
        feat = Featex(self.cfg, name="Featex")(x_NxHxWx3)
        return nn.Dense(1, name="head")(jnp.mean(feat, axis=(1, 2)))[:, 0]


def _noise_batch(rng, n=8, size=32):
    """Smooth images, half of them with added pixel noise (label 1)."""
    base = rng.uniform(-0.5, 0.5, (n, 4, 4, 3)).repeat(size // 4, axis=1).repeat(size // 4, axis=2)
    labels = np.arange(n) % 2
    noise = rng.normal(0, 0.08, base.shape) * labels[:, None, None, None]
    return np.clip(base + noise, -1, 1).astype(np.float32), labels.astype(np.float32)


def test_fine_tuning_a_head_on_featex_inside_a_user_model_lowers_the_loss():
    cfg, imc_variables = checkpoint.load_model(CHECKPOINTS / "imc_small")
    detector = NoiseDetector(cfg)
    rng = np.random.default_rng(0)
    x, _ = _noise_batch(rng)
    params = detector.init(jax.random.key(0), x)["params"]
    assert _shapes(params["Featex"]) == _shapes(imc_variables["params"]["Featex"])
    params = {**params, "Featex": imc_variables["params"]["Featex"]}  # pretrained, no conversion
    # The head learns, the pretrained backbone stays (optax.set_to_zero: a frozen Featex).
    optimizer = optax.multi_transform({"train": optax.adam(0.1), "freeze": optax.set_to_zero()},
                                      {"Featex": "freeze", "head": "train"})
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            return jnp.mean(optax.sigmoid_binary_cross_entropy(detector.apply({"params": p}, x), y))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return {**params, "Featex": Featex(cfg).project(params["Featex"])}, opt_state, loss  # the constraints

    losses = []
    for _ in range(10):
        x, y = _noise_batch(rng)
        params, opt_state, loss = step(params, opt_state, x, y)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses


def test_featex_project_is_the_models_projection_of_the_featex_part():
    cfg = checkpoint.read_model_config(CHECKPOINTS / "imc_small")
    params = random_variables(cfg, seed=6)["params"]  # unconstrained Bayar kernels
    projected = Featex(cfg).project(params["Featex"])
    expected = model.project(params, cfg)["Featex"]
    for a, b in zip(jax.tree.leaves(projected), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    bayar = np.asarray(projected["b1c1"]["bayar_kernel"])
    assert not np.allclose(bayar, params["Featex"]["b1c1"]["bayar_kernel"])
    centre = cfg.first_kernel // 2
    np.testing.assert_allclose(bayar[centre, centre], -1.0, atol=1e-6)
    np.testing.assert_allclose(bayar.sum(axis=(0, 1)), 0.0, atol=1e-5)  # the off-centre taps sum to 1
    np.testing.assert_array_equal(np.asarray(projected["b2c1"]["kernel"]), params["Featex"]["b2c1"]["kernel"])
