"""The small models shipped in checkpoints/: they load, hold no optimiser state, stay small, and
compute what they computed when they were packaged (outputs on a bundled photo)."""
import json
from pathlib import Path

import numpy as np
import pytest

from mantra_jax import checkpoint
from mantra_jax.eval import reference
from mantra_jax.imc import taxonomy
from mantra_jax.infer.predict import Predictor

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
SHIPPED = {"mantranet_small": "ladn", "imc_small": "imc"}


def test_the_shipped_checkpoints_are_small_and_hold_the_model_only():
    total = sum(f.stat().st_size for name in SHIPPED for f in (CHECKPOINTS / name).rglob("*") if f.is_file())
    assert 0 < total <= 2 * 1024 * 1024
    for name in SHIPPED:
        steps = [p for p in (CHECKPOINTS / name / checkpoint.STEPS_DIR).iterdir() if p.is_dir()]
        assert len(steps) == 1 and steps[0].name.isdigit()
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


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_checkpoint_carries_its_training_settings_and_card(name):
    """Every command names the step the model was taken at and why; evaluate_imc and sensitivity
    default to the settings it was trained with (flags.txt); the card states the licences."""
    from mantra_jax import provenance

    folder = CHECKPOINTS / name
    assert all((folder / f).is_file() for f in checkpoint.SHIPPED_FILES)
    _, _, record = checkpoint.load_model_at(folder)
    assert record["step"] > 0 and record["step_reason"] == provenance.BEST_BY_VALIDATION
    assert record["best_val_loss"] is not None
    trained = provenance.read_run_flags(folder)
    assert {"data_dir", "seed", "batch_size", "width_scale"} <= set(trained)
    assert int(trained["steps_per_epoch"]) * int(trained["epochs"]) >= record["step"]
    card = (folder / "README.md").read_text()
    assert f"Step {record['step']:,}" in card or f"step {record['step']}" in card.lower()
    assert "## Licence" in card and "Apache-2.0" in card


def test_the_shipped_imc_model_traces_readably_by_default():
    """By default the map shows the model's answer at every pixel, shaded by its confidence, over
    the photo: the small model's top probability stays far below 0.5, which once left its maps
    all grey. The summary's dominant class is the class most of the drawn pixels show."""
    from mantra_jax.infer import trace

    tracer = trace.Tracer.from_checkpoint(CHECKPOINTS / "imc_small", level=trace.DEFAULT_LEVEL)
    rgb = reference.reference_image()
    t = tracer.trace(rgb)
    assert t.top_prob.max() < 0.5  # what a fixed 0.5 threshold would have left blank
    row = trace.trace_summary(t)
    assert row["trace_below_threshold"] < 0.5
    confidence = trace.confidence(t.top_prob, t.level)
    assert np.mean(confidence > 0.2) > 0.5  # most pixels visibly coloured
    drawn = trace.trace_image(t, rgb=rgb)
    grey = trace.trace_image(t, threshold=2.0, rgb=rgb)  # nothing coloured: the grey photo
    assert np.mean(np.any(drawn != grey, axis=-1)) > 0.5
    names = taxonomy.class_names(t.level)
    assert row["trace_dominant"] == names[np.bincount(t.class_map.ravel()).argmax()]


def test_packaging_a_run_keeps_its_step_validation_loss_flags_and_card(tmp_path):
    from mantra_jax import provenance
    from mantra_jax.nn import config
    from tests.helpers import random_variables

    cfg = config.make_config(width_scale=0.125, widths=((4,), (8, 8)), head="imc", num_classes=7)
    run = tmp_path / "run"
    checkpoint.save_model(run, cfg, random_variables(cfg, 0), {"best_val_loss": 1.5}, step=750)
    (run / "flags.txt").write_text("--crop=64\n--data_dir=photos\n")
    package = tmp_path / "package"
    package.mkdir()
    (package / "README.md").write_text("the card")
    checkpoint.package_model(run, package)
    _, _, record = checkpoint.load_model_at(package)
    assert (record["step"], record["step_reason"], record["best_val_loss"]) == (750, provenance.BEST_BY_VALIDATION, 1.5)
    assert provenance.read_run_flags(package) == {"crop": "64", "data_dir": "photos"}
    assert (package / "README.md").read_text() == "the card"
    (run / "flags.txt").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="flags.txt"):
        checkpoint.package_model(run, tmp_path / "other")
