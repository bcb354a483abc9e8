"""Sensitivity and robustness studies (mantra_jax/eval/sensitivity.py, experiments/sensitivity.py)."""
import csv
import hashlib
import json
import os
import re
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest

from mantra_jax.data import photos
from mantra_jax.eval import sensitivity
from mantra_jax.metrics import plots
from mantra_jax.imc import manipulations, taxonomy
from mantra_jax.nn import config, model
from tests.helpers import write_photo_folder

PATCH = 48
REPO = Path(__file__).resolve().parents[1]
TYPES = ["Quantization", "Dithering", "JPEGCompress"]  # 25 leaves; each one changes a noise image
SMALL_LEVELS = dict(downscale_factors=(1.0, 0.5), jpeg_qualities=(90, 50), blur_kernels=(3, 7))


def photo_folder(root, wanted):
    return write_photo_folder(root, wanted, height=PATCH, width=PATCH)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = photo_folder(tmp_path_factory.mktemp("photos"), {"test": 2, "train": 1})
    return photos.build_patch_index(root, patch=PATCH, use_cache=False)


def _key(image):
    return image.shape, hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def oracle(items):
    """A perfect predictor: it looks the forged image up among the study's own (deterministic)
    forgeries and returns the ground truth. An image the study did not announce is a KeyError."""
    table = {}
    for _, image, mask in items:
        known = table.setdefault(_key(image), mask)
        assert np.array_equal(known, mask), "two forgeries with the same pixels and different masks"
    return sensitivity.per_image(lambda rgb: table[_key(rgb)].astype(np.float32))


def constant(images):
    return np.full(images.shape[:3], 0.5, np.float32)


def red_channel(images):
    return images[..., 0].astype(np.float32) / 255.0


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------
# Sensitivity
# --------------------------------------------------------------------------------------------
def test_perfect_predictor_scores_one_for_every_leaf(index):
    patches = sensitivity.pristine_patches(index, 3, seed=5)
    leaves = sensitivity.select_leaves(TYPES)
    perfect = oracle(sensitivity.sensitivity_forgeries(patches, leaves, seed=5))
    rows = sensitivity.run_sensitivity(perfect, patches, leaves, seed=5, batch_size=4)
    assert [r["leaf"] for r in rows] == [m.leaf for m in leaves]
    assert all(r["auc"] == 1.0 and r["auc_pooled"] == 1.0 and r["n"] == 3 for r in rows)


def test_constant_predictor_scores_one_half(index):
    patches = sensitivity.pristine_patches(index, 2, seed=0)
    rows = sensitivity.run_sensitivity(constant, patches, sensitivity.select_leaves(["GaussianBlur"]), batch_size=3)
    assert len(rows) == 16
    assert all(r["auc"] == 0.5 and r["n"] == 2 for r in rows)


def test_samples_share_patch_and_mask_across_leaves_and_stay_within_half(index):
    patches = sensitivity.pristine_patches(index, 4, seed=2)
    leaves = sensitivity.select_leaves(["JPEGCompress"])[:2]
    items = list(sensitivity.sensitivity_forgeries(patches, leaves, seed=2))
    first, second = items[:4], items[4:]
    for (_, _, mask_a), (_, _, mask_b) in zip(first, second):
        np.testing.assert_array_equal(mask_a, mask_b)
        assert 0 < mask_a.mean() <= 0.5
    for (_, image, mask), patch in zip(first, patches):
        np.testing.assert_array_equal(image[mask == 0], patch[mask == 0])  # hard edge: outside untouched
    # Every patch of the (two-patch) split is used before any is used twice.
    assert len({p.tobytes() for p in patches[:2]}) == 2


def test_leaf_selection():
    assert {m.type for m in sensitivity.select_leaves(families=["contrast"])} == {"AutoContrast", "HistEq"}
    assert len(sensitivity.select_leaves(["BoxBlur"], ["blur"])) == 16
    with pytest.raises(KeyError, match="Boxblur"):
        sensitivity.select_leaves(["Boxblur"])
    with pytest.raises(ValueError, match="no IMC leaf"):
        sensitivity.select_leaves(["BoxBlur"], ["noise"])


# --------------------------------------------------------------------------------------------
# Robustness
# --------------------------------------------------------------------------------------------
def test_perfect_predictor_is_robust_to_every_attack(index):
    patches = sensitivity.pristine_patches(index, 4, seed=1)
    base = sensitivity.robustness_base(patches, seed=1)
    assert [kind for kind, _, _ in base] == ["splicing", "copy_move", "removal", "enhancement"]
    levels = sensitivity.robustness_levels(**SMALL_LEVELS)
    perfect = oracle(sensitivity.robustness_samples(base, levels))
    rows = sensitivity.run_robustness(perfect, patches, seed=1, batch_size=3, **SMALL_LEVELS)
    assert [(r["attack"], r["level"]) for r in rows] == [
        ("none", 0), ("downscale", 1.0), ("downscale", 0.5), ("jpeg", 90), ("jpeg", 50), ("edge_blur", 3),
        ("edge_blur", 7)]
    assert all(r["auc"] == 1.0 and r["n"] >= 3 for r in rows)
    constant_rows = sensitivity.run_robustness(constant, patches, seed=1, **SMALL_LEVELS)
    assert all(r["auc"] == 0.5 for r in constant_rows)


def test_attacks_change_what_they_should():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    mask = np.zeros((24, 32), np.uint8)
    mask[6:14, 8:20] = 1
    small, small_mask = sensitivity.downscale(image, mask, 0.5)
    assert small.shape == (12, 16, 3)
    expected = np.zeros((12, 16), np.uint8)
    expected[3:7, 4:10] = 1  # the block is aligned to 2x2 cells: downscaled exactly
    np.testing.assert_array_equal(small_mask, expected)
    assert sensitivity.downscale(image, mask, 1.0)[0] is image
    assert not np.array_equal(sensitivity.jpeg(image, 50), image)

    blurred = sensitivity.edge_blur(image, mask, 5, half_width=2)
    band = sensitivity.edge_band(mask, 2).astype(bool)
    np.testing.assert_array_equal(blurred[~band], image[~band])
    np.testing.assert_array_equal(blurred[band], cv2.GaussianBlur(image, (5, 5), 0)[band])
    with pytest.raises(ValueError, match="odd"):
        sensitivity.edge_blur(image, mask, 4)


def test_edge_band_against_a_neighbourhood_reference():
    rng = np.random.default_rng(3)
    mask = (cv2.GaussianBlur(rng.random((20, 22)), (7, 7), 0) > 0.5).astype(np.uint8)
    half = 2
    element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * half + 1, 2 * half + 1)).astype(bool)
    expected = np.zeros_like(mask)
    for y in range(mask.shape[0]):
        for x in range(mask.shape[1]):
            seen = set()
            for dy in range(-half, half + 1):
                for dx in range(-half, half + 1):
                    yy, xx = y + dy, x + dx
                    if element[dy + half, dx + half] and 0 <= yy < mask.shape[0] and 0 <= xx < mask.shape[1]:
                        seen.add(int(mask[yy, xx]))
            expected[y, x] = seen == {0, 1}  # forged and pristine pixels within reach: on the outline
    np.testing.assert_array_equal(sensitivity.edge_band(mask, half), expected)


def test_bad_levels_are_refused():
    with pytest.raises(ValueError, match=r"downscale factors must be in \(0, 1\]"):
        sensitivity.robustness_levels(downscale_factors=(1.5,))
    with pytest.raises(ValueError, match="JPEG qualities"):
        sensitivity.robustness_levels(jpeg_qualities=(101,))
    with pytest.raises(ValueError, match="forgery kinds"):
        sensitivity.robustness_base([np.zeros((32, 32, 3), np.uint8)], seed=0, kinds=["blur"])


# --------------------------------------------------------------------------------------------
# Files, determinism, errors, a real network
# --------------------------------------------------------------------------------------------
def test_studies_write_csv_and_plots_deterministically(index, tmp_path):
    options = dict(per_param=2, types=["JPEGCompress", "Dithering", "GaussianNoise"], robust_samples=3,
                   batch_size=4, progress=False, **SMALL_LEVELS)
    sensitivity.run_studies(red_channel, index, str(tmp_path / "a"), seed=4, **options)
    sensitivity.run_studies(red_channel, index, str(tmp_path / "b"), seed=4, **options)
    sensitivity.run_studies(red_channel, index, str(tmp_path / "c"), seed=5, **options)
    for name in ("sensitivity.csv", "robustness.csv"):
        a, b, c = (read_csv(tmp_path / d / name) for d in "abc")
        assert a == b and a != c
    rows = read_csv(tmp_path / "a" / "sensitivity.csv")
    assert list(rows[0])[:4] == ["type", "param", "auc", "n"]
    assert {r["type"] for r in rows} == {"JPEGCompress", "Dithering", "GaussianNoise"} and len(rows) == 33
    assert all(0.0 <= float(r["auc"]) <= 1.0 and r["n"] == "2" for r in rows)
    assert list(read_csv(tmp_path / "a" / "robustness.csv")[0]) == ["attack", "level", "auc", "n", "auc_pooled"]
    for png in ("sensitivity.png", "sensitivity_compression.png", "sensitivity_quantization.png",
                "sensitivity_noise.png", "robustness.png"):
        assert (tmp_path / "a" / png).stat().st_size > 5000
    assert json.loads((tmp_path / "a" / "run.json").read_text())["n_leaves"] == 33


def test_every_manipulation_type_names_its_parameter_and_unit():
    for type_name in manipulations.types():
        axis = plots.parameter_axis(type_name)
        if type_name == "Dithering":
            assert axis is None  # a fixed palette: no parameter
            continue
        assert "parameter" not in axis and re.search(r" [A-Za-z]\d? \(.+\)", axis), (type_name, axis)
    with pytest.raises(KeyError, match="Blurr"):
        plots.parameter_axis("Blurr")


def _rows(leaves, auc=0.6):
    return [{"leaf": m.leaf, "type": m.type, "param": taxonomy.LEAF_TABLE[m.leaf].param, "auc": auc,
             "family": m.family} for m in leaves]


def test_drawn_panels_name_each_axis_and_say_what_q1_and_q2_are():
    import matplotlib.pyplot as plt

    rows = _rows(manipulations.REGISTRY)
    families = {}
    for row in rows:
        families.setdefault(row["family"], []).append(row)
    drawn = {}
    for family, family_rows in families.items():
        panels = plots.family_panels(family, family_rows)
        fig, axes = plots.panel_figure(panels, columns=len(panels))
        for ax in axes.ravel()[:len(panels)]:
            legend = [t.get_text() for t in ax.get_legend().get_texts()]
            drawn[ax.get_title()] = (ax.get_xlabel(), legend)
            assert ax.get_xlabel() and "parameter" not in ax.get_xlabel().replace("no parameter", "")
        plt.close(fig)
    xlabel, legend = drawn["compression: JPEGDoubleCompress (saved at Q1, then at Q2)"]
    assert xlabel.startswith("second JPEG quality Q2 (0-100")
    assert legend[:2] == ["first quality Q1 = 36", "first quality Q1 = 44"] and len(legend) == 8
    resampling = [title for title in drawn if title.startswith("resampling")]
    assert len(resampling) == 1 and len(drawn[resampling[0]][1]) == 5  # one scale axis, 5 interpolations
    assert drawn["blur: BoxBlur, GaussianBlur, MedianBlur"][0] == "kernel size K (pixels, K x K)"
    assert drawn["blur: WaveletBlur"][0] == "std of the noise removed K (8-bit levels)"
    assert "Dithering (no parameter)" in drawn["quantization: Quantization"][1]


def test_double_jpeg_lines_run_over_q2_for_each_q1():
    (panel,) = plots.family_panels("compression", _rows(sensitivity.select_leaves(["JPEGDoubleCompress"])))
    assert len(panel.lines) == 8 and all(len(x) == 8 and x == sorted(x) for _, x, _ in panel.lines)
    q1_36 = {m.param_value[1] for m in taxonomy.LEAF_TABLE if m.type == "JPEGDoubleCompress" and m.param_value[0] == 36}
    assert panel.lines[0][0] == "first quality Q1 = 36" and set(panel.lines[0][1]) == q1_36


def test_type_summary_table():
    rows = [dict(r, auc=a) for r, a in zip(_rows(sensitivity.select_leaves(["WaveletBlur"])), [0.5, 0.9, 0.7, 0.6])]
    (row,) = sensitivity.type_summary(rows)
    assert row[:4] == ["WaveletBlur", "blur", "std of the noise removed K", 4]
    assert row[4] == pytest.approx(0.675) and row[5] == "0.500 (K3)" and row[6] == "0.900 (K5)"


def test_empty_test_split_names_the_folder(tmp_path):
    (tmp_path / "only_train").mkdir()
    root = photo_folder(tmp_path / "only_train", {"train": 1})
    index = photos.build_patch_index(root, patch=PATCH, use_cache=False)
    with pytest.raises(ValueError, match=r"only_train: the 'test' split has no"):
        sensitivity.pristine_patches(index, 2, seed=0)


def test_scores_are_exact_aucs_on_concentrated_predictions():
    """A weak model's maps crowd into one 1,024-bin bin; both AUCs must still be exact rank AUCs."""
    rng = np.random.default_rng(5)
    masks = [(rng.random((24, 32)) < 0.3).astype(np.uint8) for _ in range(3)]
    probs = [(0.158 + rng.uniform(-2e-4, 2e-4, m.shape) + 5e-5 * m).astype(np.float32) for m in masks]
    by_image = iter(probs)
    items = [("group", np.zeros(m.shape + (3,), np.uint8), m) for m in masks]
    result = sensitivity.score_stream(items, lambda batch: np.stack([next(by_image) for _ in batch]), batch_size=1)

    def rank_auc(scores, labels):
        order = np.argsort(scores, kind="stable")
        ranks = np.empty(scores.size)
        ranks[order] = np.arange(1, scores.size + 1)
        for value in np.unique(scores):  # ties: the mean of their ranks
            ranks[scores == value] = ranks[scores == value].mean()
        n_pos = labels.sum()
        return (ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (labels.size - n_pos))

    per_image = [rank_auc(p.ravel().astype(np.float64), m.ravel()) for p, m in zip(probs, masks)]
    pooled = rank_auc(np.concatenate([p.ravel() for p in probs]).astype(np.float64),
                      np.concatenate([m.ravel() for m in masks]))
    assert result["group"]["auc"] == pytest.approx(np.mean(per_image), abs=1e-12)
    assert result["group"]["auc_pooled"] == pytest.approx(pooled, abs=1e-12)


def test_command_line_records_the_step_takes_the_checkpoint_defaults_and_prints_tables(index, tmp_path):
    import subprocess
    import sys

    from mantra_jax import checkpoint

    cfg = config.make_config(width_scale=0.125, backbone="baseline", windows=(3,))
    checkpoint.save_model(tmp_path / "ckpt", cfg, jax.tree.map(np.asarray, model.init(jax.random.key(0), cfg)))
    # The trainer's flags.txt: the patch size and the photo folder it was trained with.
    (tmp_path / "ckpt" / "flags.txt").write_text(f"--patch_size={PATCH}\n--data_dir={index.root}\n")
    command = [sys.executable, "-m", "experiments.sensitivity", f"--checkpoint={tmp_path / 'ckpt'}",
               f"--out={tmp_path / 'out'}", "--types=Quantization,Dithering", "--per_param=1", "--robust_samples=2",
               "--downscale_factors=1.0", "--jpeg_qualities=90", "--blur_kernels=3", "--batch_size=4"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")))
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["checkpoint"] == str((tmp_path / "ckpt").absolute()) and run["step"] == 0
    assert run["step_choice"] == "best" and run["step_reason"] == "latest: no validation loss recorded"
    assert run["model_config"] == config.to_dict(cfg) and "-m experiments.sensitivity" in run["command"]
    assert (run["patch"], run["data_dir"], run["settings_from_checkpoint"]) == (PATCH, index.root, ["data_dir", "patch"])
    tables = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ")]
    assert ["Quantization", "quantization", "palette size C", "8"] == [c.strip() for c in tables[1][:4]]
    assert [c.strip() for c in tables[2][:4]] == ["Dithering", "quantization", "-", "1"]
    assert {(row[0].strip(), row[1].strip()) for row in tables} >= {("none", "0"), ("jpeg", "90"), ("edge_blur", "3")}
