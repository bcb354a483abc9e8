"""The one step choice of every checkpoint-reading command and what reports record about it
(mantra_jax/provenance.py, mantra_jax.checkpoint.load_model_at)."""
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags

from experiments import common
from mantra_jax import checkpoint
from mantra_jax import provenance
from mantra_jax.imc import taxonomy
from mantra_jax.nn import config
from tests.helpers import random_variables

MODEL = config.make_config(width_scale=0.0625, backbone="baseline", head="imc", num_classes=taxonomy.num_classes(0))
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, expected", [("best", "best"), ("LATEST", "latest"), (" 12 ", 12), (0, 0)])
def test_step_choices(text, expected):
    assert provenance.parse_step(text) == expected


@pytest.mark.parametrize("text", ["-1", "first", "1.5", True, ""])
def test_bad_step_choices_are_refused(text):
    with pytest.raises(ValueError, match="--step must be best, latest or a step number"):
        provenance.parse_step(text)


def test_the_step_flag_parses_the_step_choice():
    fv = flags.FlagValues()
    common.define_step_flag(fv)
    assert fv["step"].default == provenance.DEFAULT_STEP and fv["step"].help == provenance.STEP_HELP
    fv(["prog", "--step=12"])
    assert fv.step == 12
    fv(["prog", "--step=latest"])
    assert fv.step == "latest"
    with pytest.raises(flags.IllegalFlagValueError, match="best, latest or a step number"):
        fv(["prog", "--step=newest"])


@pytest.mark.parametrize("command", ["evaluate", "evaluate_imc", "kcmi", "sensitivity", "predict"])
def test_every_checkpoint_command_takes_the_step_flag(command):
    done = subprocess.run([sys.executable, "-m", f"experiments.{command}", "--step=newest"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode != 0 and "best, latest or a step number" in done.stderr, done.stderr


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training run's checkpoints: step 1 is the best by validation loss, step 2 the latest."""
    directory = tmp_path_factory.mktemp("run")
    checkpoint.write_model_config(directory, MODEL)
    saver = checkpoint.Checkpointer(directory, async_save=False)
    variables = {}
    for step, loss in ((1, 0.5), (2, 0.7)):
        variables[step] = random_variables(MODEL, step)
        state = {"params": variables[step]["params"], "batch_stats": {}, "opt_state": {}}
        saver.save(step, state, {"step": step, "best_step": 1, "best_val_loss": 0.5, "val_loss": loss})
    saver.close()
    return directory, variables


@pytest.mark.parametrize("choice, step, reason", [
    ("best", 1, provenance.BEST_BY_VALIDATION), ("latest", 2, provenance.LATEST), (2, 2, provenance.ASKED_FOR),
    ("1", 1, provenance.ASKED_FOR)])
def test_load_model_at_reads_the_chosen_step_and_says_why(run_dir, choice, step, reason):
    directory, variables = run_dir
    cfg, loaded, record = checkpoint.load_model_at(directory, choice)
    assert cfg == MODEL
    jax.tree.map(np.testing.assert_array_equal, loaded["params"], variables[step]["params"])
    assert list(record) == list(provenance.RECORD_KEYS)
    assert record["checkpoint"] == str(directory.absolute()) and record["step"] == step
    assert record["step_reason"] == reason and record["step_choice"] == provenance.parse_step(choice)
    assert (record["best_step"], record["best_val_loss"], record["latest_step"]) == (1, 0.5, 2)
    assert record["model_config"] == config.to_dict(MODEL) and "python" in record["command"]
    line = provenance.describe(record)
    assert f"step {step} ({reason}" in line and str(directory.absolute()) in line


def test_a_step_that_is_not_saved_is_refused_naming_the_saved_ones(run_dir):
    with pytest.raises(checkpoint.CheckpointError, match=r"no step 5; the saved steps are \[1, 2\]"):
        checkpoint.load_model_at(run_dir[0], 5)


def test_converted_weights_have_no_best_step(tmp_path):
    checkpoint.save_model(tmp_path / "converted", MODEL, random_variables(MODEL, 0))
    _, _, record = checkpoint.load_model_at(tmp_path / "converted", "best")
    assert record["step"] == 0 and record["step_reason"] == provenance.LATEST_NO_VALIDATION


def test_command_line_and_run_flags(tmp_path):
    assert provenance.command_line(["/x/kcmi.py", "--k", "3", "--out", "a b"], module="experiments.kcmi") == \
        "python -m experiments.kcmi --k 3 --out 'a b'"
    assert provenance.command_line(["tool.py", "-v"], module="") == "tool.py -v"
    (tmp_path / "flags.txt").write_text("--crop=64\n--data_dir=\n--nopostprocess\n--level=0\n")
    assert provenance.read_run_flags(tmp_path) == {"crop": "64", "data_dir": "", "level": "0"}
    assert provenance.read_run_flags(tmp_path / "none") == {}
