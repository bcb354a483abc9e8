"""The small models shipped in checkpoints/: they load, hold no optimiser state, stay small, and
compute what they computed when they were packaged (outputs on a bundled photo)."""
import json
from pathlib import Path

import numpy as np
import pytest

from mantra_jax import checkpoint
from mantra_jax.eval import reference
from mantra_jax.infer.predict import Predictor

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
SHIPPED = {"mantranet_small": "ladn", "imc_small": "imc"}


def test_the_shipped_checkpoints_are_small_and_hold_the_model_only():
    total = sum(f.stat().st_size for name in SHIPPED for f in (CHECKPOINTS / name).rglob("*") if f.is_file())
    assert 0 < total <= 2 * 1024 * 1024
    for name in SHIPPED:
        steps = [p for p in (CHECKPOINTS / name / checkpoint.STEPS_DIR).iterdir() if p.is_dir()]
        assert [p.name for p in steps] == ["0"]
        items = {p.name for p in steps[0].iterdir() if p.is_dir()}
        assert items <= {"params", "batch_stats", "meta"} and "params" in items, items


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_checkpoint_computes_its_stored_reference_outputs(name):
    cfg, variables = checkpoint.load_model(CHECKPOINTS / name)
    assert cfg.head == SHIPPED[name]
    expected = json.loads((CHECKPOINTS / name / "expected_outputs.json").read_text())
    got = reference.outputs(cfg, variables)
    assert got["kind"] == expected["kind"]
    if expected["kind"] == "imc":
        assert got["top5_classes"] == expected["top5_classes"]
        np.testing.assert_allclose(got["top5_probabilities"], expected["top5_probabilities"], atol=1e-5)
    else:
        assert got["shape"] == expected["shape"]
        np.testing.assert_allclose(got["grid"], expected["grid"], atol=1e-5)
        np.testing.assert_allclose([got["mean"], got["std"]], [expected["mean"], expected["std"]], atol=1e-5)


def test_the_shipped_localisation_model_runs_through_the_predictor():
    predictor = Predictor.from_checkpoint(CHECKPOINTS / "mantranet_small")
    prob = predictor.predict(reference.reference_image())
    expected = json.loads((CHECKPOINTS / "mantranet_small" / "expected_outputs.json").read_text())
    assert prob.shape == tuple(expected["shape"])
    np.testing.assert_allclose(prob.mean(), expected["mean"], atol=1e-5)
