"""IMC evaluation of a saved checkpoint (experiments/evaluate_imc.py, mantra_jax/eval/imc_eval.py) and
the IMC report (mantra_jax/metrics/imc.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mantra_jax import checkpoint
from mantra_jax import provenance
from mantra_jax.data import imc_pipeline, photos
from mantra_jax.eval import imc_eval
from mantra_jax.imc import taxonomy
from mantra_jax.metrics import imc as imc_metrics
from mantra_jax.metrics import plots
from mantra_jax.nn import config, model
from tests.helpers import random_variables, write_photo_folder

ROOT = Path(__file__).resolve().parents[1]
LEVEL = 1
PATCH, CROP, SAMPLES, BATCH = 64, 32, 10, 4  # 10 samples in batches of 4: the last one is padded
MODEL = config.make_config(width_scale=0.125, backbone="baseline", head="imc",
                           num_classes=taxonomy.num_classes(LEVEL))


def photo_folder(root, wanted):
    return write_photo_folder(root, wanted, height=PATCH, width=PATCH)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    variables = random_variables(MODEL, 1)
    directory = tmp_path_factory.mktemp("imc_ckpt")
    checkpoint.save_model(directory, MODEL, variables)
    return directory, variables


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return photo_folder(tmp_path_factory.mktemp("photos"), {"test": 2, "val": 1, "train": 1})


def reference_topk(variables, index, level_j):
    """Top-k at level j by a plain forward pass over the same samples, without the task code."""
    batches = imc_pipeline.make_val_batches(index, seed=imc_eval.TRAINER_VAL_SEED, n_samples=SAMPLES,
                                            batch_size=SAMPLES, level=LEVEL, crop=CROP, split="test")
    (batch,) = batches
    logits = model.apply(variables, model.preprocess(batch["image"]), MODEL, pooled=True)["logits"]
    probs = np.asarray(jax.nn.softmax(logits, axis=-1), np.float64) @ taxonomy.level_matrix(LEVEL, level_j)
    truth = taxonomy.leaf_to_level(batch["leaf"], level_j)
    # Rank of the truth: how many classes score strictly higher (0 = top-1).
    ranks = [sum(p > p[t]) for p, t in zip(probs, truth)]
    return {k: float(np.mean([r < k for r in ranks])) for k in (1, 3, 5, 10)}


def test_cli_report_matches_a_plain_forward_pass(saved_model, folder, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    directory, variables = saved_model
    out = tmp_path / "out"
    report = imc_eval.evaluate_checkpoint(str(directory), str(folder), str(out), split="test", samples=SAMPLES,
                                          batch_size=BATCH, patch=PATCH, crop=CROP, progress=False)
    assert set(report["levels"]) == {"0", "1"}
    assert report["n_samples"] == SAMPLES  # the padded sample of the last batch does not count
    assert report["run"]["split"] == "test"
    index = photos.build_patch_index(folder, patch=PATCH, use_cache=False)
    for j, row in report["levels"].items():
        values = [row[f"top{k}"] for k in (1, 3, 5, 10)]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert values == sorted(values)  # top-k can only grow with k
        reference = reference_topk(variables, index, int(j))
        assert values == pytest.approx([reference[k] for k in (1, 3, 5, 10)], abs=1e-9)
    assert report["levels"]["0"]["top10"] == 1.0  # 7 families: the truth is always among 10
    assert (out / "imc_report.md").is_file()
    assert (out / "confusion_L1.png").stat().st_size > 1000
    on_disk = json.loads((out / "imc_report.json").read_text())
    assert on_disk["levels"] == report["levels"]


def test_library_confusion_counts_every_sample(saved_model, folder):
    _, variables = saved_model
    index = photos.build_patch_index(folder, patch=PATCH, use_cache=False)
    summary, sums, level = imc_eval.evaluate(MODEL, variables, index, split="val", n_samples=6, batch_size=4,
                                             crop=CROP)
    assert level == LEVEL
    assert sums["confusion"].shape == (27, 27)
    assert sums["confusion"].sum() == pytest.approx(6)
    assert np.trace(sums["confusion"]) / 6 == pytest.approx(summary["L1_top1"])


def test_non_imc_models_are_refused_with_the_checkpoint_named():
    with pytest.raises(imc_eval.NotAnImcModel, match=r"runs/x: not an IMC model.*'ladn'"):
        imc_eval.trained_level(config.make_config(width_scale=0.125), where="runs/x")
    with pytest.raises(imc_eval.NotAnImcModel, match="10 classes matches no hierarchy level"):
        imc_eval.trained_level(MODEL.replace(num_classes=10))
    assert imc_eval.trained_level(MODEL.replace(num_classes=380)) == 5


def test_cli_refuses_a_mantranet_checkpoint_before_reading_photos(tmp_path):
    checkpoint.write_model_config(tmp_path / "ladn", config.make_config(width_scale=0.125))
    with pytest.raises(imc_eval.NotAnImcModel, match="not an IMC model"):
        imc_eval.evaluate_checkpoint(str(tmp_path / "ladn"), str(tmp_path / "missing_photos"), str(tmp_path / "out"),
                                     progress=False)


def test_empty_split_is_a_clear_error(saved_model, tmp_path):
    _, variables = saved_model
    root = photo_folder(tmp_path, {"train": 1})
    index = photos.build_patch_index(root, patch=PATCH, use_cache=False)
    with pytest.raises(ValueError, match=rf"{root.name}.*'test' split has no"):
        imc_eval.evaluate(MODEL, variables, index, split="test", n_samples=4, batch_size=4, crop=CROP)


def test_empty_photo_folder_is_named(saved_model, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no image file found"):
        imc_eval.evaluate_checkpoint(str(saved_model[0]), str(tmp_path / "empty"), str(tmp_path / "out"),
                                     progress=False)


def test_defaults_the_checkpoint_knows_come_from_it_and_the_report_says_what_was_used(
        saved_model, folder, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    directory = tmp_path / "run"
    checkpoint.save_model(directory, MODEL, saved_model[1])
    # What experiments/common.py write_flags leaves in a trainer's work directory.
    (directory / "flags.txt").write_text(f"--crop={CROP}\n--val_samples=6\n--data_dir={folder}\n--level={LEVEL}\n")
    done = subprocess.run([sys.executable, "-m", "experiments.evaluate_imc", f"--checkpoint={directory}",
                           f"--out={tmp_path / 'out'}", f"--patch={PATCH}", f"--batch_size={BATCH}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "imc_report.json").read_text())
    run = report["run"]
    assert (run["crop"], run["samples"], run["data_dir"]) == (CROP, 6, str(folder))
    assert run["settings_from_checkpoint"] == ["crop", "samples", "data_dir"] and report["n_samples"] == 6
    assert (run["n_photos_in_split"], run["n_patches_in_split"]) == (2, 2)  # two 64x64 test photos
    assert (run["n_photos_used"], run["n_patches_used"]) == (2, 2)
    assert run["step"] == 0 and run["step_reason"] == provenance.LATEST_NO_VALIDATION
    assert run["model_config"] == config.to_dict(MODEL) and "python" in run["command"]
    # A flag wins over the checkpoint.
    override = imc_eval.evaluate_checkpoint(str(directory), str(folder), str(tmp_path / "out2"), patch=PATCH,
                                            crop=16, samples=4, batch_size=BATCH, progress=False)["run"]
    assert (override["crop"], override["samples"], override["settings_from_checkpoint"]) == (16, 4, [])
    assert (override["n_photos_used"], override["n_patches_used"]) == (2, 2)

    out = done.stdout
    assert "6 samples from 2 patches of 2 photos" in out and f"crop {CROP}" in out
    assert "| 1 | IMC-25 | 27 |" in out and taxonomy.LEVEL_NAMES_NOTE in out


def test_a_checkpoint_without_its_settings_says_which_defaults_were_assumed(saved_model, folder, tmp_path,
                                                                           monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(imc_eval, "DEFAULT_CROP", 16)  # small stand-ins for the trainer's defaults
    monkeypatch.setattr(imc_eval, "DEFAULT_SAMPLES", 4)
    directory = tmp_path / "converted"
    checkpoint.save_model(directory, MODEL, saved_model[1])  # no flags.txt
    run = imc_eval.evaluate_checkpoint(str(directory), str(folder), str(tmp_path / "out"), patch=PATCH,
                                       batch_size=BATCH, progress=False)["run"]
    assert run["settings_assumed"] == ["crop", "samples"] and run["settings_from_checkpoint"] == []
    err = capsys.readouterr().err
    assert "does not say what it was trained with" in err and "crop 16, 4 samples" in err and "--crop" in err


def test_checkpoint_photo_folder_that_is_not_here_is_named(saved_model, tmp_path):
    directory = tmp_path / "run"
    checkpoint.save_model(directory, MODEL, saved_model[1])
    (directory / "flags.txt").write_text("--data_dir=/nowhere/dresden\n")
    with pytest.raises(ValueError, match=r"/nowhere/dresden: the photo folder the checkpoint was trained on .*--data_dir"):
        imc_eval.evaluate_checkpoint(str(directory), None, str(tmp_path / "out"), progress=False)


def test_report_tables_say_why_level_names_and_class_counts_differ(tmp_path):
    level = 4
    summary = {"val_loss": 1.0, **{f"L{j}_top{k}": 0.5 for j in range(level + 1) for k in imc_metrics.TOPK}}
    imc_metrics.write_report(tmp_path, summary, None, level)
    markdown = (tmp_path / "imc_report.md").read_text()
    assert "| 1 | IMC-25 | 27 |" in markdown and "| 4 | IMC-185 | 191 |" in markdown
    assert "name (paper's) | classes (this taxonomy's)" in markdown and taxonomy.LEVEL_NAMES_NOTE in markdown
    assert "IMC-25 has 27 classes, IMC-185 has 191" in taxonomy.LEVEL_NAMES_NOTE
    assert json.loads((tmp_path / "imc_report.json").read_text())["level_names"] == taxonomy.LEVEL_NAMES_NOTE


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_confusion_labels_are_distinct_short_and_keyed(level):
    names = taxonomy.class_names(level)
    labels, key = plots.confusion_labels(names)
    assert len(set(labels)) == len(names) and max(map(len, labels)) <= 24
    for name, label in zip(names, labels):
        if label != name:  # a short label with a number, and the full name in the key
            number = label.rsplit("[", 1)[1].rstrip("]")
            assert f"[{number}] {name}" in key
    if level == 1:
        assert labels[10:14] == [f"JPEGDoubleCompress [{i}]" for i in range(1, 5)]
