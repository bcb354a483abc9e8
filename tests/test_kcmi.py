"""The KCMI camera-model feature test (mantra_jax/eval/kcmi.py, experiments/kcmi.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from mantra_jax import provenance
from mantra_jax.eval import kcmi
from mantra_jax.nn import config, featex, model
from mantra_jax.infer.predict import Predictor
from mantra_jax import checkpoint
from tests.helpers import random_variables

ROOT = Path(__file__).resolve().parents[1]
CAMERAS = ("canon", "nikon", "sony")
MODEL = config.make_config(width_scale=0.125, backbone="baseline", head="imc", num_classes=7)


def camera_folder(root, per_camera=4, size=(40, 48), cameras=CAMERAS):
    """Noise photos whose red level tells the camera (camera c: red = 60 c + 20)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(cameras):
        (root / name).mkdir(parents=True)
        for i in range(per_camera):
            rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            rgb[..., 0] = 60 * c + 20
            cv2.imwrite(str(root / name / f"img{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return root


def red_level(rgb):
    return np.array([rgb[..., 0].mean(), 1.0])


def constant(rgb):
    return np.array([1.0, 2.0, 3.0])


# --------------------------------------------------------------------------------------------
# k-NN
# --------------------------------------------------------------------------------------------
def brute_force_knn(fit_x, fit_y, query_x, k, metric):
    """One query at a time in plain Python: sort by (distance, fitting index), vote, break ties."""
    predictions = []
    for q in query_x:
        distances = []
        for j, f in enumerate(fit_x):
            if metric == "cosine":
                d = 1.0 - float(np.dot(q, f) / (np.linalg.norm(q) * np.linalg.norm(f)))
            else:
                d = float(np.linalg.norm(q - f))
            distances.append((d, j))
        distances.sort()
        neighbours = [int(fit_y[j]) for _, j in distances[:k]]
        counts = {c: neighbours.count(c) for c in neighbours}
        best = max(counts.values())
        predictions.append(next(c for c in neighbours if counts[c] == best))
    return np.array(predictions)


@pytest.mark.parametrize("metric", kcmi.METRICS)
@pytest.mark.parametrize("k", [1, 4, 7])
def test_knn_matches_a_brute_force_reference(metric, k):
    rng = np.random.default_rng(k)
    fit_x, query_x = rng.standard_normal((30, 5)), rng.standard_normal((25, 5))
    fit_y = rng.integers(0, 4, 30)
    got = kcmi.knn_predict(fit_x, fit_y, query_x, k=k, metric=metric)
    np.testing.assert_array_equal(got, brute_force_knn(fit_x, fit_y, query_x, k, metric))


def test_knn_tied_vote_goes_to_the_nearest_tied_camera():
    fit_x = np.array([[0.0], [1.0], [2.0], [3.0]])
    fit_y = np.array([0, 1, 1, 0])
    # Neighbours of 1.2 by distance: 1.0 (camera 1), 2.0 (1), 0.0 (0), 3.0 (0): a 2-2 tie.
    assert kcmi.knn_predict(fit_x, fit_y, np.array([[1.2]]), k=4, metric="euclidean")[0] == 1
    assert kcmi.knn_predict(fit_x, fit_y, np.array([[-0.5]]), k=4, metric="euclidean")[0] == 0
    # k above the fitted count uses every fitted sample.
    assert kcmi.knn_predict(fit_x, fit_y, np.array([[1.2]]), k=50, metric="euclidean")[0] == 1


def test_split_halves_is_seeded_disjoint_and_per_camera():
    labels = np.repeat([0, 1, 2], [5, 2, 8])
    fit, test = kcmi.split_halves(labels, seed=3)
    assert not set(fit) & set(test) and len(fit) + len(test) == labels.size
    assert list(np.bincount(labels[fit])) == [2, 1, 4]
    assert list(np.bincount(labels[test])) == [3, 1, 4]
    again = kcmi.split_halves(labels, seed=3)
    np.testing.assert_array_equal(again[0], fit)
    orders = {tuple(kcmi.split_halves(labels, seed=s)[0]) for s in range(6)}
    assert len(orders) > 1  # the seed matters


# --------------------------------------------------------------------------------------------
# The test on folders
# --------------------------------------------------------------------------------------------
def test_separable_cameras_score_one(tmp_path):
    result = kcmi.run_kcmi(red_level, camera_folder(tmp_path, per_camera=5), k=3)
    assert result["accuracy"] == 1.0
    assert result["cameras"] == list(CAMERAS)
    assert result["n_fit"] == 6 and result["n_test"] == 9  # floor / ceil of 5 per camera
    assert all(r["accuracy"] == 1.0 for r in result["per_camera"].values())
    assert np.trace(np.array(result["confusion"])) == 9


def test_constant_features_score_chance(tmp_path):
    result = kcmi.run_kcmi(constant, camera_folder(tmp_path, per_camera=4), k=7)
    assert result["accuracy"] == pytest.approx(1.0 / len(CAMERAS))
    assert result["accuracy"] == pytest.approx(result["chance_accuracy"])
    assert result["k_used"] == 6  # 2 fitted photos per camera


def test_report_files(tmp_path):
    result = kcmi.run_kcmi(red_level, camera_folder(tmp_path / "cams"), k=3)
    kcmi.write_report(tmp_path / "out", result, run={"checkpoint": "x"})
    report = json.loads((tmp_path / "out" / "kcmi_report.json").read_text())
    assert report["accuracy"] == 1.0 and report["run"] == {"checkpoint": "x"}
    assert "| sony | 4 | 2 | 2 | 100.0 |" in (tmp_path / "out" / "kcmi_report.md").read_text()
    assert (tmp_path / "out" / "kcmi_confusion.png").stat().st_size > 1000


def test_unreadable_photos_are_skipped_and_listed(tmp_path):
    root = camera_folder(tmp_path, per_camera=3)
    (root / "nikon" / "broken.png").write_bytes(b"not a png")
    result = kcmi.run_kcmi(red_level, root, k=1)
    assert len(result["skipped"]) == 1 and "broken.png" in result["skipped"][0]
    assert result["per_camera"]["nikon"]["n_images"] == 3


@pytest.mark.parametrize("make, message", [
    (lambda root: root.mkdir(), r"no camera sub-folder with photos"),
    (lambda root: camera_folder(root, cameras=("canon",)), r"only one camera model \('canon'\)"),
    (lambda root: camera_folder(root, per_camera=1), r"fewer than two photos.*'canon' \(1\)"),
    (lambda root: None, r"does not exist"),
])
def test_bad_folders_are_named(tmp_path, make, message):
    root = tmp_path / "camera_set"
    make(root)
    with pytest.raises(kcmi.KcmiDataError, match=rf"camera_set.*{message}"):
        kcmi.list_camera_images(root)


def test_a_camera_left_with_one_readable_photo_is_an_error(tmp_path):
    root = camera_folder(tmp_path, per_camera=2)
    (root / "sony" / "img0.png").write_bytes(b"broken")
    with pytest.raises(kcmi.KcmiDataError, match=r"fewer than two readable photos.*'sony' \(1\)"):
        kcmi.run_kcmi(red_level, root)


# --------------------------------------------------------------------------------------------
# Featex features
# --------------------------------------------------------------------------------------------
def test_centre_crop_keeps_short_sides_whole():
    rgb = np.arange(10 * 7 * 3).reshape(10, 7, 3)
    np.testing.assert_array_equal(kcmi.centre_crop(rgb, 4), rgb[3:7, 1:5])
    np.testing.assert_array_equal(kcmi.centre_crop(rgb, 8), rgb[1:9, :])


def test_featex_features_average_the_centre_crop():
    variables = random_variables(MODEL, 0)
    predictor = Predictor(MODEL, variables, features_only=True)

    def feature(rgb):  # what experiments/kcmi.py compares
        return predictor.features(kcmi.centre_crop(rgb, 16), pooled=True)

    rgb = np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    window = rgb[2:18, 4:20]
    feat = featex.apply(variables["params"]["Featex"], model.preprocess(window)[None], MODEL)
    np.testing.assert_allclose(feature(rgb), np.asarray(jnp.mean(feat, axis=(0, 1, 2))), atol=1e-6)
    assert feature(rgb).shape == (MODEL.feature_dim,)


def test_command_line_on_a_saved_checkpoint(tmp_path):
    checkpoint.save_model(tmp_path / "ckpt", MODEL, random_variables(MODEL, 0))
    root = camera_folder(tmp_path / "cams", per_camera=2, size=(20, 20))
    done = subprocess.run([sys.executable, "-m", "experiments.kcmi", f"--checkpoint={tmp_path / 'ckpt'}",
                           f"--data_dir={root}", f"--out={tmp_path / 'out'}", "--k=7", "--crop=16", "--step=latest"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "kcmi_report.json").read_text())
    assert report["n_test"] == 3 and 0.0 <= report["accuracy"] <= 1.0
    assert report["feature_dim"] == MODEL.feature_dim
    assert report["run"]["crop"] == 16 and report["images"][0] == "canon/img0.png"
    # The report says which step it scored and why, with the model and the command line.
    run = report["run"]
    assert run["checkpoint"] == str((tmp_path / "ckpt").absolute()) and run["step"] == 0
    assert run["step_choice"] == "latest" and run["step_reason"] == provenance.LATEST
    assert run["model_config"] == config.to_dict(MODEL) and run["command"]
    assert "step 0 (latest)" in (tmp_path / "out" / "kcmi_report.md").read_text()
    table = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [cell.strip() for cell in table[0]] == ["camera", "photos", "fitted", "scored", "accuracy %"]
    assert [row[0].strip() for row in table[1:]] == list(CAMERAS)


def test_cli_checks_the_folder_before_loading_the_model(tmp_path):
    with pytest.raises(kcmi.KcmiDataError, match="only one camera model"):
        kcmi.evaluate_checkpoint(str(tmp_path / "no_checkpoint"), str(camera_folder(tmp_path / "c", cameras=("a",))),
                                 str(tmp_path / "out"), progress=False)
