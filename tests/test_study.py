"""The small study's bookkeeping (experiments.study) and the no-training baseline it scores."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mantra_jax.eval import baselines
from mantra_jax.metrics import pixel as pixel_metrics

ROOT = Path(__file__).resolve().parents[1]


def _exact_auc(scores, labels):
    return pixel_metrics.roc_auc(scores.ravel().tolist(), labels.ravel().tolist())


def test_noise_inconsistency_finds_a_region_of_another_noise_level():
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (96, 96, 3)).astype(np.uint8), (0, 0), 6)
    image = np.clip(smooth + rng.normal(0, 2, smooth.shape), 0, 255)
    region = np.zeros((96, 96), np.uint8)
    region[30:70, 20:60] = 1
    image[region == 1] += rng.normal(0, 12, (int(region.sum()), 3))
    scores = baselines.noise_inconsistency(np.clip(image, 0, 255).astype(np.uint8))
    assert scores.shape == (96, 96) and scores.dtype == np.float32
    assert 0 <= scores.min() and scores.max() < 1
    assert _exact_auc(scores, region) > 0.9


def test_noise_inconsistency_of_uniform_noise_is_near_zero_on_average_and_rejects_bad_input():
    rng = np.random.default_rng(1)
    image = np.clip(128 + rng.normal(0, 8, (64, 64, 3)), 0, 255).astype(np.uint8)
    assert baselines.noise_inconsistency(image).mean() < 0.5
    try:
        baselines.noise_inconsistency(image[..., 0])
    except ValueError as e:
        assert "H x W x 3" in str(e)
    else:
        raise AssertionError("a grey image was accepted")


def test_region_aucs_tell_a_map_that_finds_the_paste_from_one_that_follows_objects():
    from mantra_jax.eval import diagnose as study

    rng = np.random.default_rng(2)
    regions = {name: np.zeros((60, 60), bool) for name in ("forged", "copy", "paste")}
    regions["forged"][5:20, 5:20] = regions["copy"][30:45, 5:20] = regions["paste"][30:45, 35:50] = True
    noise = rng.uniform(0, 0.5, (60, 60))
    finds_paste = np.where(regions["forged"], noise + 0.5, noise)  # only the pasted region above
    result = study.region_aucs(finds_paste, regions, step=1)
    assert result["forged_vs_background"] == 1.0 and result["forged_vs_copy"] == 1.0
    assert result["forged_vs_paste"] == 1.0
    assert 0.4 < result["copy_vs_background"] < 0.6 and 0.4 < result["paste_vs_background"] < 0.6

    objects = np.where(regions["forged"] | regions["copy"] | regions["paste"], noise + 0.5, noise)
    result = study.region_aucs(objects, regions, step=1)
    assert result["forged_vs_background"] == result["copy_vs_background"] == result["paste_vs_background"] == 1.0
    assert 0.35 < result["forged_vs_copy"] < 0.65  # a copy looks like its source
    assert 0.35 < result["forged_vs_paste"] < 0.65  # nor does it tell the pasted object from its look-alike
    background = ~(regions["forged"] | regions["copy"] | regions["paste"])
    labels = np.concatenate([np.ones(225), np.zeros(background.sum())])
    scores = np.concatenate([noise[regions["copy"]], noise[background]])
    assert study.region_aucs(noise, regions, step=1)["copy_vs_background"] == _exact_auc(scores, labels)


def _study(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "experiments.study", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_study_links_its_data_and_writes_results_from_finished_parts(tmp_path):
    pristine = tmp_path / "pristine"
    for sub in ("a", "b", "jpeg"):
        (pristine / sub).mkdir(parents=True)
    coverage = tmp_path / "coverage"
    (coverage / "mask").mkdir(parents=True)
    (coverage / "mask_aligned").mkdir()
    for n in (1, 2):
        (coverage / "mask" / f"{n}forged.tif").write_bytes(b"released")
    (coverage / "mask_aligned" / "2forged.tif").write_bytes(b"aligned")

    out = tmp_path / "study"
    (out / "imc_hl5").mkdir(parents=True)
    (out / "imc_hl5" / "final_metrics.json").write_text("{}")
    (out / "imc_hl5" / "study_wall.json").write_text(json.dumps({"seconds": 600.0, "invocations": 2}))
    (out / "imc_hl5" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "kind": "train", "loss": 5.9}, {"step": 300, "kind": "train", "loss": 4.0},
        {"step": 150, "kind": "val", "val_loss": 4.5}, {"step": 300, "kind": "val", "val_loss": 4.7}]))
    levels = {str(j): {"top1": 0.1 * (j + 1), "top5": 0.5} for j in range(6)}
    (out / "eval" / "imc_hl5").mkdir(parents=True)
    (out / "eval" / "imc_hl5" / "imc_report.json").write_text(json.dumps({"levels": levels, "n_samples": 760.0}))
    (out / "eval" / "e2e_random" / "coverage_strict").mkdir(parents=True)
    (out / "eval" / "e2e_random" / "coverage_strict" / "report.json").write_text(json.dumps(
        {"n_images": 91, "pixel_auc_mean": 0.6123, "pixel_auc_pooled": 0.55, "image_auc": 0.5}))

    proc = _study(f"--out={out}", f"--pristine_dir={pristine}", "--pristine_subsets=a,b",
                  f"--coverage_dir={coverage}", "--parts=results")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (out / "data" / "pristine").iterdir()) == ["a", "b"]
    masks = out / "data" / "coverage_masks_all"
    assert (masks / "1forged.tif").read_bytes() == b"released" and (masks / "2forged.tif").read_bytes() == b"aligned"

    results = (out / "RESULTS.md").read_text()
    row = next(line for line in results.splitlines() if line.startswith("| imc_hl5 |"))
    assert "| 300 | 10.0 | 2.00 | 150 |" in row  # steps, minutes, s/step, best validation step
    assert "| imc_hl5 (760 crops) | 10.0 / 50.0 | 20.0 / 50.0 |" in results
    assert "| e2e_random | 91 | 0.612 | 0.550 |" in results  # then the F1s, image AUC, texture AUC
    assert "imc_hl0 (unfinished)" in results
    assert (out / "figures" / "curves_imc.png").stat().st_size > 0


def test_study_refuses_unknown_parts_and_a_missing_photo_folder(tmp_path):
    proc = _study(f"--out={tmp_path / 's'}", "--parts=imc_hl9")
    assert proc.returncode != 0 and "unknown --parts" in proc.stderr
    proc = _study(f"--out={tmp_path / 's'}", "--parts=results")
    assert proc.returncode != 0 and "--pristine_dir is required" in proc.stderr


@pytest.mark.parametrize("gate", ["hard_sigmoid", "sigmoid"])
def test_saturated_hard_sigmoid_gates_pass_no_gradient_to_the_convlstm(gate):
    """What `diagnose.anomaly_network_health` measures: with every gate input pushed beyond the hard
    sigmoid's flat ends, no gradient reaches the ConvLSTM; smooth gates still pass one."""
    import jax

    from mantra_jax.eval import diagnose
    from mantra_jax.nn import config, model

    cfg = config.make_config(width_scale=0.125, windows=(3,), lstm_gate=gate)
    variables = model.init(jax.random.key(0), cfg)
    lstm = variables["params"]["cLSTM"]
    f = lstm["bias"].shape[0] // 4  # blocks i, f, c, o
    # Gate inputs at 6: beyond the hard sigmoid's flat end, on the smooth sigmoid's slope; the cell
    # input at 40, where tanh is flat in float32 for both, so only the gates can pass a gradient.
    lstm["bias"] = np.concatenate([np.full(2 * f, 6.0), np.full(f, 40.0), np.full(f, 6.0)]).astype(np.float32)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8),
             "mask": (rng.random((2, 24, 24)) < 0.3).astype(np.uint8)}
    health = diagnose.anomaly_network_health(cfg, variables, batch)
    assert health["gate_inputs_beyond_2_5"] > 0.99
    assert health["grad_norm_output"] > 0
    if gate == "hard_sigmoid":
        assert health["grad_norm_convlstm"] == 0.0
    else:
        assert health["grad_norm_convlstm"] > 0.0


def test_a_study_run_records_its_wall_time_and_a_stopped_run_ends_the_study(tmp_path):
    from mantra_jax.study import runs

    done = tmp_path / "done"
    write = (f"import pathlib; p = pathlib.Path({str(done / 'final_metrics.json')!r}); "
             "p.parent.mkdir(exist_ok=True); p.write_text('{}')")
    runs.run_training("done", done, [sys.executable, "-c", write], lambda m: None)
    runs.run_training("done", done, [sys.executable, "-c", write], lambda m: None)
    wall = json.loads((done / runs.WALL_FILE).read_text())
    assert wall["invocations"] == 2 and wall["seconds"] > 0
    with pytest.raises(SystemExit, match="stopped .exit 75. .*rerun the study"):
        runs.run_training("stopped", tmp_path / "stopped", [sys.executable, "-c", "raise SystemExit(75)"],
                          lambda m: None)
    assert json.loads((tmp_path / "stopped" / runs.WALL_FILE).read_text())["invocations"] == 1
