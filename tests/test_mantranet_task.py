"""The end-to-end task: loss from logits, Table 7 initialisations and optimisers, a short run."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mantra_jax import checkpoint
from mantra_jax.data import photos
from mantra_jax.nn import config, model
from mantra_jax.train import loop, mantranet
from tests.helpers import write_photo_folder

CFG = config.make_config(width_scale=0.0625, backbone="baseline")


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = write_photo_folder(tmp_path_factory.mktemp("photos"), {"train": 2, "val": 1})
    return photos.build_patch_index(root, use_cache=False)


def test_loss_is_binary_cross_entropy_of_logits_not_of_probabilities(index):
    task = mantranet.make_task(CFG, patch_index=index)
    v = model.init(jax.random.key(0), CFG)
    # A confident "pristine" prediction: pred bias -12 -> logits ~ -12.
    v["params"]["pred"]["bias"] = jnp.full((1,), -12.0)
    v["params"]["pred"]["kernel"] = jnp.zeros_like(v["params"]["pred"]["kernel"])
    batch = {"image": np.zeros((2, 16, 16, 3), np.uint8), "mask": np.zeros((2, 16, 16), np.uint8)}
    loss, _ = task.loss(v["params"], v["batch_stats"], batch, jnp.float32)
    assert float(loss) < 1e-4  # a sigmoid applied twice would floor at ln 2 = 0.693
    batch["mask"][:, :8] = 1
    loss, _ = task.loss(v["params"], v["batch_stats"], batch, jnp.float32)
    np.testing.assert_allclose(float(loss), 0.5 * float(optax.sigmoid_binary_cross_entropy(jnp.float32(-12.0), jnp.float32(1.0))), rtol=1e-4)


def first_update(init, lr=1e-3, featex_lr=5e-5):
    params = model.init(jax.random.key(0), CFG)["params"]
    opt = mantranet.make_optimizer(init, lr, featex_lr)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    return updates


def test_half_freeze_keeps_featex_and_half_random_slows_it():
    frozen = first_update("half_freeze")
    assert all(np.all(u == 0) for u in jax.tree_util.tree_leaves(frozen["Featex"]))
    np.testing.assert_allclose(frozen["pred"]["bias"], -1e-3, rtol=1e-3)
    slow = first_update("half_random")
    np.testing.assert_allclose(slow["Featex"]["b1c2"]["bias"], -5e-5, rtol=1e-3)
    np.testing.assert_allclose(slow["pred"]["bias"], -1e-3, rtol=1e-3)


def test_featex_from_an_imc_checkpoint(tmp_path):
    imc_cfg = CFG.replace(head="imc", num_classes=7)
    imc_vars = model.init(jax.random.key(5), imc_cfg)
    checkpoint.save_model(tmp_path / "imc", imc_cfg, imc_vars)
    init = mantranet.initial_variables(CFG, "half_random", str(tmp_path / "imc"))
    v = init(jax.random.key(0))
    jax.tree.map(np.testing.assert_array_equal, v["params"]["Featex"], imc_vars["params"]["Featex"])
    assert "cLSTM" in v["params"]
    other = config.make_config(width_scale=0.125, backbone="baseline")
    with pytest.raises(ValueError, match="does not match"):
        mantranet.initial_variables(other, "half_freeze", str(tmp_path / "imc"))
    with pytest.raises(ValueError, match="needs a checkpoint"):
        mantranet.initial_variables(CFG, "half_freeze", None)


def test_short_run_writes_table6_report(index, tmp_path):
    task = mantranet.make_task(CFG, patch_index=index, learning_rate=1e-3, type_weights=(1, 1, 1, 1),
                               val_per_type=2, val_batch_size=4, patch_size=32)
    cfg = loop.LoopConfig(workdir=str(tmp_path / "run"), batch_size=2, epochs=1, steps_per_epoch=2,
                          log_every=1, async_checkpoint=False, num_devices=1)
    summary = loop.train(task, cfg)
    for name in ("splicing", "copy_move", "removal", "enhancement", "overall"):
        assert 0.0 <= summary[f"f1_{name}"] <= 1.0
    report = json.loads((tmp_path / "run" / "localisation_report.json").read_text())
    assert report["val_loss"] == pytest.approx(summary["val_loss"])
    assert "| F1 |" in (tmp_path / "run" / "localisation_report.md").read_text()
    rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]
