"""Benchmark evaluation (mantra_jax/eval/evaluate.py, experiments/evaluate.py) with fake predictors on a tiny
synthetic benchmark."""
import csv
import json
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from mantra_jax import provenance
from mantra_jax.errors import UserError
from mantra_jax.eval import datasets, evaluate
from tests.helpers import check_page

HEIGHT, WIDTH = 32, 48
REPO_ROOT = Path(__file__).resolve().parents[1]


def _make_benchmark(root: Path, n_images=5, seed=0):
    """Images whose red channel reveals the forged region (200 forged, 40 pristine), with masks."""
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        top, left = rng.integers(0, HEIGHT // 2), rng.integers(0, WIDTH // 2)
        mask[top: top + rng.integers(4, HEIGHT // 2), left: left + rng.integers(4, WIDTH // 2)] = 1
        rgb = rng.integers(0, 30, (HEIGHT, WIDTH, 3)).astype(np.uint8)
        rgb[..., 0] = np.where(mask == 1, 200, 40)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / f"img{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / f"img{i}_gt.png"), mask * 255)
    for i in range(3):
        rgb = rng.integers(0, 30, (HEIGHT, WIDTH, 3)).astype(np.uint8)
        rgb[..., 0] = 40
        (root / "authentic").mkdir(exist_ok=True)
        cv2.imwrite(str(root / "authentic" / f"au{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return root


def perfect(rgb):
    return (rgb[..., 0] > 128).astype(np.float32)


def inverted(rgb):
    return 1.0 - perfect(rgb)


def constant(rgb):
    return np.full(rgb.shape[:2], 0.5, np.float32)


def _run(root, predict_fn, out, authentic=True, **options):
    pairs, skipped = datasets.pair_images_and_masks(root / "images", root / "masks")
    authentic_paths = datasets.list_authentic_images(root / "authentic") if authentic else None
    return evaluate.run_evaluation(predict_fn, pairs, authentic_paths, out, evaluate.EvaluationOptions(**options),
                                   skipped=skipped, progress=False)


@pytest.fixture
def bench(tmp_path):
    return _make_benchmark(tmp_path / "bench")


def test_perfect_predictor_report(bench, tmp_path):
    out = tmp_path / "out"
    summary = _run(bench, perfect, out)
    report = json.loads((out / "report.json").read_text())
    required = ["n_images", "n_skipped", "pixel_auc_mean", "pixel_auc_pooled", "f1_at_0.5_mean", "f1_best_mean",
                "iou_at_0.5_mean", "image_auc"]
    assert all(key in report for key in required)
    assert report["n_images"] == 5 and report["n_skipped"] == 0
    for key in ["pixel_auc_mean", "pixel_auc_pooled", "f1_at_0.5_mean", "f1_best_mean", "iou_at_0.5_mean",
                "image_auc"]:
        assert report[key] == 1.0, key
    assert summary["pixel_auc_mean"] == report["pixel_auc_mean"]
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [f"img{i}" for i in range(5)]
    assert rows[0]["image"].endswith("img0.png") and rows[0]["mask"].endswith("img0_gt.png")
    markdown = (out / "report.md").read_text()
    assert "| pixel AUC, per-image mean | 1.0000 |" in markdown
    panels = sorted(p.name for p in (out / "panels").iterdir())
    assert len(panels) == 8 and panels[0].startswith("best_01_") and panels[-1].startswith("worst_04_")
    panel = cv2.imread(str(out / "panels" / panels[0]))
    assert panel.shape[1] == 3 * WIDTH + 8  # photo | truth | prediction with two gaps
    assert (out / "stats.npz").exists() and (out / "authentic_stats.npz").exists()
    # index.html: the headline numbers and panels on top, one row per forged and authentic image.
    page = check_page(out, 5 + 3)
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "pixel AUC, per-image mean</th><td class=\"num\">1.0000" in text and "image AUC" in text
    assert sum(link.startswith("panels/") for link in page.links) == 2 * 8
    forged = [row for row in page.rows if "forged" in row["text"]]
    assert len(forged) == 5 and all(len(row["src"]) == 4 for row in forged)  # photo, truth, overlay, mask
    assert sorted(row["text"][1] for row in forged) == sorted(r["image"] for r in rows)
    assert all(row["text"][3:5] == ["forged", "1.0000"] for row in forged)  # set, AUC


def test_inverted_and_constant_predictors(bench, tmp_path):
    plain = _run(bench, inverted, tmp_path / "inv", negate_rule=False)
    assert plain["pixel_auc_mean"] == 0.0 and plain["f1_at_0.5_mean"] == 0.0
    with_inversion = _run(bench, inverted, tmp_path / "inv2", negate_rule=False, invert_predictions=True)
    assert with_inversion["f1_at_0.5_mean"] == 1.0 and with_inversion["iou_at_0.5_mean"] == 1.0
    flat = _run(bench, constant, tmp_path / "flat")
    assert flat["pixel_auc_mean"] == 0.5 and flat["pixel_auc_pooled"] == 0.5 and flat["image_auc"] == 0.5


def test_skips_are_counted_and_resizing_recovers_them(bench, tmp_path):
    cv2.imwrite(str(bench / "masks" / "img1_gt.png"), np.zeros((HEIGHT * 2, WIDTH * 2), np.uint8))  # wrong size
    cv2.imwrite(str(bench / "images" / "lonely.png"), np.zeros((HEIGHT, WIDTH, 3), np.uint8))  # no mask
    (bench / "images" / "broken.png").write_bytes(b"junk")
    cv2.imwrite(str(bench / "masks" / "broken_gt.png"), np.zeros((HEIGHT, WIDTH), np.uint8))
    summary = _run(bench, perfect, tmp_path / "out")
    assert summary["n_images"] == 4 and summary["n_skipped"] == 3
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    reasons = sorted(s["reason"] for s in report["skipped"] if s["kind"] == "image")
    assert reasons == ["no mask", "size mismatch", "unreadable"]
    check_page(tmp_path / "out", 4 + 3, [s["path"] for s in report["skipped"]])
    resized = _run(bench, perfect, tmp_path / "out2", resize_masks=True)
    # img1's mask is now all zero: scored, but without an AUC, never as 0.
    assert resized["n_skipped"] == 2 and resized["n_images"] == 5
    assert resized["n_auc_undefined"] == 1 and resized["pixel_auc_mean"] == 1.0


def test_max_images_limits_both_sets(bench, tmp_path):
    summary = _run(bench, perfect, tmp_path / "out", max_images=2)
    assert summary["n_images"] == 2 and summary["n_authentic"] == 2


def test_prediction_of_the_wrong_shape_stops_the_run(bench, tmp_path):
    with pytest.raises(ValueError, match="img0: the predictor returned shape"):
        _run(bench, lambda rgb: np.zeros((4, 4), np.float32), tmp_path / "out")


def test_recompute_from_stats_matches_and_changes_only_the_scoring(bench, tmp_path):
    first = _run(bench, inverted, tmp_path / "first", negate_rule=False)
    again = evaluate.recompute_from_stats(tmp_path / "first", tmp_path / "again",
                                          evaluate.EvaluationOptions(negate_rule=False))
    for key in ["pixel_auc_mean", "pixel_auc_pooled", "f1_at_0.5_mean", "image_auc", "n_images", "n_skipped"]:
        assert again[key] == first[key], key
    flipped = evaluate.recompute_from_stats(tmp_path / "first", tmp_path / "flipped",
                                            evaluate.EvaluationOptions(negate_rule=False, invert_predictions=True))
    assert flipped["f1_at_0.5_mean"] == 1.0 and flipped["run"]["recomputed_from"] == str(tmp_path / "first")
    assert all(len(row["src"]) == 2 for row in check_page(tmp_path / "flipped", 5).rows)  # photo, truth


def test_the_model_path_with_a_fake_predictor(bench, tmp_path, monkeypatch):
    loaded = {}

    class FakePredictor:
        @classmethod
        def from_checkpoint(cls, path, step):
            loaded.update(path=path, step=step)
            predictor = cls()
            predictor.provenance = provenance.checkpoint_record(
                path, step=step, choice=step, reason=provenance.ASKED_FOR, meta={}, model_config={"head": "ladn"})
            return predictor

        def predict(self, rgb):
            return perfect(rgb)

    monkeypatch.setitem(sys.modules, "mantra_jax.infer.predict", types.SimpleNamespace(Predictor=FakePredictor))
    summary = evaluate.evaluate_checkpoint(
        "/ckpt", bench / "images", bench / "masks", tmp_path / "out",
        evaluate.EvaluationOptions(negate_rule=False, bins=256, n_panels=1), authentic=bench / "authentic", step=7,
        progress=False)
    assert loaded == {"path": "/ckpt", "step": 7}
    assert summary["pixel_auc_mean"] == 1.0 and summary["negate_rule"] is False and summary["bins"] == 256
    assert summary["run"]["checkpoint"] == "/ckpt" and summary["image_auc"] == 1.0
    assert summary["run"]["step"] == 7 and summary["run"]["step_reason"] == "asked for"
    assert summary["run"]["model_config"] == {"head": "ladn"} and summary["run"]["command"]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| step | 7 |" in markdown and "model_config" not in markdown  # the configuration: in the JSON
    assert len(list((tmp_path / "out" / "panels").iterdir())) == 2


def test_command_line_recomputes_from_stats(bench, tmp_path):
    _run(bench, inverted, tmp_path / "first", negate_rule=False)
    command = [sys.executable, "-m", "experiments.evaluate", f"--from_stats={tmp_path / 'first'}",
               f"--out={tmp_path / 'cli'}", "--invert_predictions", "--nonegate_rule"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    table = dict(line.strip("|").split("|")[:2] for line in result.stdout.splitlines() if line.startswith("| "))
    assert float(table[" pixel F1 at 0.5, per-image mean "]) == 1.0  # a table on stdout
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert report["invert_predictions"] is True and report["pixel_auc_mean"] == 0.0

    missing = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--out={tmp_path / 'x'}"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "--checkpoint" in missing.stderr


# --------------------------------------------------------------------------------------------
# User errors: one line, no traceback; Orbax quiet; first frames noted
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny checkpoint, an IMC one, one whose configuration and weights disagree, an empty folder."""
    import jax

    from mantra_jax import checkpoint
    from mantra_jax.nn import config, model

    root = tmp_path_factory.mktemp("ckpts")
    tiny = config.make_config(width_scale=0.125, windows=(7, 15))
    wider = config.make_config(width_scale=0.25, windows=(7, 15))
    imc = tiny.replace(head="imc", num_classes=5)
    for name, cfg in (("tiny", tiny), ("imc", imc), ("mixed", wider)):
        checkpoint.save_model(root / name, cfg, jax.tree.map(np.asarray, model.init(jax.random.key(0), cfg)))
    checkpoint.write_model_config(root / "mixed", tiny)  # the weights stay those of width 0.25
    (root / "empty").mkdir()
    return root


def test_user_errors_name_the_problem(bench, tmp_path, checkpoints):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("keep me")
    images, masks, out = bench / "images", bench / "masks", tmp_path / "out"
    tiny = checkpoints / "tiny"
    score, rescore = evaluate.evaluate_checkpoint, evaluate.recompute_from_stats
    cases = [
        ("masks folder .*empty holds no files", score, (tiny, images, tmp_path / "empty", out)),
        ("masks folder .*nowhere does not exist", score, (tiny, images, tmp_path / "nowhere", out)),
        ("cannot use the checkpoint .*empty: .*not a mantra_jax checkpoint",
         score, (checkpoints / "empty", images, masks, out)),
        ("cannot use the checkpoint .*imc: .*'imc' head", score, (checkpoints / "imc", images, masks, out)),
        ("cannot use the checkpoint .*mixed: ", score, (checkpoints / "mixed", images, masks, out)),
        ("--out .*a_file is a file, not a folder", score, (tiny, images, masks, tmp_path / "a_file")),
        ("--from_stats .*nowhere is not a folder", rescore, (tmp_path / "nowhere", tmp_path / "o")),
        ("stats.npz does not exist", rescore, (tmp_path / "empty", tmp_path / "o")),
    ]
    for message, function, args in cases:
        with pytest.raises(UserError, match=message):
            function(*args)
    assert (tmp_path / "a_file").read_text() == "keep me" and not (tmp_path / "out").exists()


def test_command_line_user_error_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--from_stats={tmp_path / 'nowhere'}",
                             f"--out={tmp_path / 'x'}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --from_stats {tmp_path / 'nowhere'} is not a folder: give the output folder of an earlier run"]


def test_command_line_run_is_quiet_and_notes_first_frames(bench, tmp_path, checkpoints):
    from PIL import Image

    rgb = cv2.cvtColor(cv2.imread(str(bench / "images" / "img0.png")), cv2.COLOR_BGR2RGB)
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    (bench / "images" / "img0.png").unlink()
    frames[0].save(bench / "images" / "img0.tif", save_all=True, append_images=frames[1:])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "experiments.evaluate", f"--checkpoint={checkpoints / 'tiny'}",
               f"--images={bench / 'images'}", f"--masks={bench / 'masks'}", f"--out={out}", "--n_panels=0"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "orbax" not in result.stderr.lower(), result.stderr
    assert len(result.stderr.splitlines()) < 10
    report = json.loads((out / "report.json").read_text())
    note = "multi-page TIFF: first of 2 pages read"
    assert report["notes"] == [{"path": str(bench / "images" / "img0.tif"), "note": note}]
    with open(out / "per_image.csv", newline="") as f:
        assert {row["name"]: row["note"] for row in csv.DictReader(f)} == {f"img{i}": note if i == 0 else ""
                                                                           for i in range(5)}
    assert note in (out / "report.md").read_text()


def test_authentic_images_the_pairing_set_aside_are_scored_not_skipped(bench, tmp_path):
    """A tagged layout (COVERAGE) sets its originals aside while pairing; given as the authentic
    folder too, they are scored, and the page and report do not list them as skipped."""
    pairs, _ = datasets.pair_images_and_masks(bench / "images", bench / "masks")
    originals = datasets.list_authentic_images(bench / "authentic")
    set_aside = [datasets.Skipped(str(p), "authentic by layout", "not_forged", "") for p in originals]
    summary = evaluate.run_evaluation(perfect, pairs, originals, tmp_path / "out", evaluate.EvaluationOptions(),
                                      skipped=set_aside, progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert summary["n_authentic"] == len(originals) and report["skipped"] == []
    check_page(tmp_path / "out", len(pairs) + len(originals), [])
    assert (tmp_path / "out" / "probability_colour_bar.png").is_file()  # the overlays' colour bar
