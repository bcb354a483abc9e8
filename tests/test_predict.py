"""Inference from Python and from the command line, on a tiny random-weight checkpoint."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest

from mantra_jax import checkpoint
from mantra_jax.infer import predict
from mantra_jax.errors import UserError
from mantra_jax.nn import config, featex, model, tiled

ROOT = Path(__file__).resolve().parents[1]
TINY = config.make_config(width_scale=0.125, windows=(7, 15))
SHAPE = (40, 52)  # every CLI test image has this size, so the CLI compiles once


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    variables = jax.tree.map(np.asarray, model.init(jax.random.key(5), TINY))
    checkpoint.save_model(directory, TINY, variables)
    return directory


@pytest.fixture(scope="module")
def predictor(ckpt):
    return predict.Predictor.from_checkpoint(ckpt)


def _photo(shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), shape[::-1], interpolation=cv2.INTER_LINEAR)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def _write(path, image):
    ok, data = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(data.tobytes())


def test_predict_equals_the_whole_image_pass(predictor, ckpt):
    cfg, variables = checkpoint.load_model(ckpt)
    rgb = _photo()
    prob = predictor.predict(rgb)
    assert prob.shape == SHAPE and prob.dtype == np.float32
    np.testing.assert_allclose(prob, tiled.whole_image_probabilities(variables, rgb, cfg), atol=1e-6)
    assert prob.std() > 0


def test_array_inputs_are_converted_like_files(predictor):
    grey = _photo()[..., 0]
    expected = predictor.predict(np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(predictor.predict(grey), expected)
    rgba = np.dstack([np.repeat(grey[..., None], 3, axis=2), np.full(grey.shape, 7, np.uint8)])
    np.testing.assert_array_equal(predictor.predict(rgba), expected)
    with pytest.raises(ValueError, match="shape"):
        predictor.predict(np.zeros((4, 4, 5), np.uint8))


@pytest.fixture
def tiled_calls(monkeypatch):
    """The tile size of every tiled pass predict makes, in order."""
    calls = []
    real = tiled.canvas_probabilities

    def spy(*args, **kwargs):
        calls.append(kwargs["tile"])
        return real(*args, **kwargs)

    monkeypatch.setattr(tiled, "canvas_probabilities", spy)
    return calls


def test_tiling_switches_on_above_the_pixel_limit(ckpt, tiled_calls):
    calls = tiled_calls
    cfg, variables = checkpoint.load_model(ckpt)
    rgb = _photo((70, 90), seed=1)
    whole = tiled.whole_image_probabilities(variables, rgb, cfg)
    limited = predict.Predictor(cfg, variables, max_untiled_pixels=70 * 90 - 1)
    assert not limited.is_tiled(60, 90) and limited.is_tiled(70, 90)
    np.testing.assert_allclose(limited.predict(rgb), whole, atol=1e-4)
    assert calls == [None]  # the tile chosen by the image size
    forced = predict.Predictor(cfg, variables, tile=16)
    np.testing.assert_allclose(forced.predict(rgb), whole, atol=1e-4)
    assert calls == [None, 16]
    predict.Predictor(cfg, variables, max_untiled_pixels=70 * 90).predict(rgb)
    assert len(calls) == 2  # at the limit: one whole-image pass


def test_whole_image_or_tiled_follows_xla_memory_analysis_against_the_budget(ckpt, monkeypatch, tiled_calls):
    calls = tiled_calls
    cfg, variables = checkpoint.load_model(ckpt)
    rgb = _photo((70, 90), seed=2)
    program, needed = tiled.whole_image_program(variables, 70, 90, cfg)
    assert program is not None and needed > 70 * 90 * 4  # at least the float32 map itself
    whole = tiled.whole_image_probabilities(variables, rgb, cfg)
    # A budget the program does not fit: tiled, whatever the pixel limit says (even the user's override).
    small = predict.Predictor(cfg, variables, max_untiled_pixels=10**9, memory_budget_bytes=needed)
    assert small.is_tiled(70, 90)
    np.testing.assert_allclose(small.predict(rgb), whole, atol=1e-4)
    assert calls == [None]  # the tile chosen by the image size
    roomy = predict.Predictor(cfg, variables, max_untiled_pixels=10**9, memory_budget_bytes=4 * needed)
    assert not roomy.is_tiled(70, 90)
    np.testing.assert_array_equal(roomy.predict(rgb), whole)
    assert len(calls) == 1
    # Without a budget given, the device's free memory decides (faked small here).
    monkeypatch.setattr(tiled, "available_memory_bytes", lambda device=None: needed // 2)
    assert predict.Predictor(cfg, variables, max_untiled_pixels=10**9).is_tiled(70, 90)
    assert predict.Predictor(cfg, variables, memory_budget_bytes=4 * needed).is_tiled(70, 90)  # by default: tiles


def test_available_memory_is_known_on_this_host():
    free = tiled.available_memory_bytes()
    assert free is not None and free > 0


def _drawn_variables(cfg, rng):
    """Random weights with unit variances: a localiser whose maps vary from pixel to pixel."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), cfg))

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "moving_variance" in name or "min_std" in name:
            return np.ones(leaf.shape, np.float32)
        fan_in = int(np.prod(leaf.shape[:-1])) or 1
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract)


def test_batched_prediction_matches_single_images():
    cfg = config.make_config(width_scale=0.125, backbone="baseline", windows=(3, 5))
    rng = np.random.default_rng(0)
    variables = _drawn_variables(cfg, rng)
    images = rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    probs = predict.Predictor(cfg, variables).predict_batch(images, batch_size=2)
    assert probs.shape == (3, 24, 24) and probs.dtype == np.float32
    for image, prob in zip(images, probs):
        np.testing.assert_allclose(prob, tiled.whole_image_probabilities(variables, image, cfg), atol=2e-5)
    np.testing.assert_array_equal(predict.Predictor(cfg, variables).predict_batch(images[:2]), probs[:2])
    with pytest.raises(ValueError, match="N x H x W x 3"):
        predict.Predictor(cfg, variables).predict_batch(images[0])


def test_featex_features_of_any_head():
    cfg = TINY.replace(head="imc", num_classes=5)
    variables = _drawn_variables(cfg, np.random.default_rng(1))
    rgb = _photo((20, 24), seed=3)
    with pytest.raises(ValueError, match="'imc' head"):
        predict.Predictor(cfg, variables)
    predictor = predict.Predictor(cfg, variables, features_only=True)
    with pytest.raises(ValueError, match="'imc' head"):
        predictor.predict_batch(rgb[None])
    with pytest.raises(ValueError, match="'imc' head"):
        predictor.predict(rgb)
    feat = featex.apply(variables["params"]["Featex"], model.preprocess(rgb)[None], cfg)[0]
    np.testing.assert_allclose(predictor.features(rgb), feat, atol=1e-6)
    np.testing.assert_allclose(predictor.features(rgb, pooled=True), np.mean(feat, axis=(0, 1)), atol=1e-6)
    assert predictor.features(rgb, pooled=True).shape == (cfg.feature_dim,)


def test_imc_checkpoint_and_bad_options_are_refused():
    imc = TINY.replace(head="imc", num_classes=5)
    with pytest.raises(ValueError, match="head"):
        predict.Predictor(imc, model.init(jax.random.key(0), imc))
    with pytest.raises(ValueError, match="tile"):
        predict.Predictor(TINY, model.init(jax.random.key(0), TINY), tile=0)


def test_mask_overlay_and_score():
    prob = np.array([[0.0, 0.2], [0.5, 1.0]], np.float32)
    np.testing.assert_array_equal(predict.mask_image(prob), [[0, 51], [128, 255]])
    assert predict.image_score(prob) == pytest.approx(0.425)
    grey = np.full((2, 2, 3), 100, np.uint8)
    over = predict.overlay_image(grey, prob)
    assert over.shape == (2, 2, 3) and over.dtype == np.uint8
    over = over.astype(int)
    # p = 0 leaves the photo untouched; the higher p, the more of the colour map's colour (viridis:
    # yellow at 1, its red and green above its blue).
    assert over[0, 0].tolist() == [100, 100, 100]
    assert 0 < np.abs(over[0, 1] - 100).sum() < np.abs(over[1, 0] - 100).sum() < np.abs(over[1, 1] - 100).sum()
    assert over[1, 1, 0] > over[1, 1, 2] and over[1, 1, 1] > over[1, 1, 2]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    photo_bgr = _photo()[..., ::-1]
    _write(root / "colour.png", photo_bgr)
    _write(root / "grey.png", cv2.cvtColor(photo_bgr, cv2.COLOR_BGR2GRAY))
    _write(root / "alpha.png", np.dstack([photo_bgr, np.full(SHAPE, 200, np.uint8)]))
    _write(root / "deep.png", photo_bgr.astype(np.uint16) * 257)
    (root / "sub").mkdir()
    _write(root / "sub" / "colour.jpg", photo_bgr)  # same stem as colour.png
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


def test_folder_prediction(folder, ckpt, predictor, tmp_path, capsys):
    out = tmp_path / "out"
    status = predict.predict_folder(ckpt, [str(folder)], out, step="latest", npy=True)
    assert status == 0
    err = capsys.readouterr().err
    assert "broken.png" in err and "skipped" in err
    assert "5/6" in err or "6/6" in err  # the progress bar
    run = json.loads((out / "run.json").read_text())  # which step made these masks, and why
    assert (run["step"], run["step_choice"], run["step_reason"]) == (0, "latest", "latest")
    assert run["model_config"] == config.to_dict(TINY) and "step 0 (latest)" in err

    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"].replace(str(folder), "").lstrip("/\\") for r in rows] == [
        "alpha.png", "colour.png", "deep.png", "grey.png", "sub/colour.jpg"]
    with open(out / "skipped.csv", newline="") as f:
        skipped = list(csv.DictReader(f))
    assert [s["file"] for s in skipped] == [str(folder / "broken.png")]
    assert "not a readable image" in skipped[0]["error"]

    stems = ["alpha", "colour", "deep", "grey", "colour-2"]
    for row, stem in zip(rows, stems):
        assert (int(row["height"]), int(row["width"])) == SHAPE
        prob = np.load(out / f"{stem}.npy")
        _, expected = predictor.predict_file(row["file"])
        np.testing.assert_array_equal(prob, expected)
        assert float(row["score"]) == pytest.approx(prob.mean(), abs=1e-6)
        mask = cv2.imread(str(out / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mask, np.rint(prob * 255).astype(np.uint8))
        overlay = cv2.imread(str(out / f"{stem}_overlay.png"))
        assert overlay.shape == SHAPE + (3,)
        assert float(row["seconds"]) > 0
    # The 16-bit PNG is the colour one scaled exactly, the RGBA one has the same colours.
    np.testing.assert_array_equal(np.load(out / "deep.npy"), np.load(out / "colour.npy"))
    np.testing.assert_array_equal(np.load(out / "alpha.npy"), np.load(out / "colour.npy"))


def test_a_decompression_bomb_is_refused_and_nothing_processed_reported(folder, ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    status = predict.predict_folder(ckpt, [str(folder / "colour.png"), str(tmp_path / "missing.png")], out,
                                    max_pixels=100)
    assert status == 1
    err = capsys.readouterr().err
    assert "decompression bomb" in err and "missing.png" in err
    assert not list(out.glob("*_mask.png"))
    with open(out / "summary.csv", newline="") as f:
        assert list(csv.reader(f)) == [list(predict.SUMMARY_FIELDS)]


def test_an_unusable_checkpoint_is_named(folder, tmp_path):
    with pytest.raises(UserError, match=f"cannot use the checkpoint {tmp_path}: .*not a mantra_jax checkpoint"):
        predict.predict_folder(tmp_path, [str(folder / "colour.png")], tmp_path / "out")


def _command(*args):
    return subprocess.run([sys.executable, "-m", "experiments.predict", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_command_line_help_and_errors(folder, ckpt, tmp_path):
    done = _command("--help")
    assert "--checkpoint" in done.stdout and "--npy" in done.stdout and "--precision" in done.stdout
    assert "--trace_checkpoint" in done.stdout and "--trace_level" in done.stdout
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    done = _command("--checkpoint", ckpt, "--out", a_file, folder / "colour.png")  # one line, no traceback
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: --out {a_file} is a file, not a folder: give a folder for the outputs"
    assert a_file.read_text() == "not a folder"
    done = _command("--checkpoint", ckpt, "--out", tmp_path / "o", "--tile", "0", folder / "colour.png")
    assert done.returncode != 0 and "flag --tile=0" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def _cli(args, capsys):
    status = predict.predict_folder(*args)
    return status, capsys.readouterr().err


def test_images_in_the_output_folder_are_left_out_and_said_so(ckpt, tmp_path, capsys):
    _write(tmp_path / "photo.png", _photo()[..., ::-1])
    with pytest.raises(UserError, match="is not empty: 1 file"):  # an input folder is no --out
        predict.predict_folder(ckpt, [str(tmp_path)], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]
    status = predict.predict_folder(ckpt, [str(tmp_path)], tmp_path, overwrite=True)
    err = capsys.readouterr().err
    assert status == 1
    assert "1 image(s) left out because they lie in the output folder" in err
    assert "every image found lies in the output folder" in err and "another --out" in err


def test_a_symbolic_link_loop_is_skipped_and_the_rest_processed(ckpt, tmp_path, capsys):
    images_dir = tmp_path / "in"
    images_dir.mkdir()
    _write(images_dir / "photo.png", _photo()[..., ::-1])
    (images_dir / "loop1.png").symlink_to("loop2.png")
    (images_dir / "loop2.png").symlink_to("loop1.png")
    out = tmp_path / "out"
    status, err = _cli([ckpt, [str(images_dir), str(images_dir / "loop1.png")], out], capsys)
    assert status == 0 and "Traceback" not in err
    with open(out / "summary.csv", newline="") as f:
        assert [r["output"] for r in csv.DictReader(f)] == ["photo"]
    with open(out / "skipped.csv", newline="") as f:
        skipped = {row["file"]: row["error"] for row in csv.DictReader(f)}
    assert set(skipped) == {str(images_dir / "loop1.png"), str(images_dir / "loop2.png")}
    assert all("symbolic link loop" in reason for reason in skipped.values())


def test_outputs_are_named_and_first_frames_noted(ckpt, tmp_path, capsys):
    from PIL import Image

    frames = [Image.fromarray(_photo(seed=s)) for s in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "single.tif")
    (tmp_path / "sub").mkdir()
    frames[0].save(tmp_path / "sub" / "single.png")
    out = tmp_path / "out"
    inputs = [str(tmp_path / n) for n in ("anim.gif", "pages.tif", "single.tif", "sub/single.png")]
    status, err = _cli([ckpt, inputs, out], capsys)
    assert status == 0
    with open(out / "summary.csv", newline="") as f:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(f)}
    assert rows["anim.gif"]["note"] == "animated GIF: first of 3 frames read"
    assert rows["pages.tif"]["note"] == "multi-page TIFF: first of 3 pages read"
    assert rows["single.tif"]["note"] == "" and rows["single.png"]["note"] == ""
    assert [rows[n]["output"] for n in ("single.tif", "single.png")] == ["single", "single-2"]
    assert (out / "single-2_mask.png").exists()
    assert "first of 3 frames read" in err


# --------------------------------------------------------------------------------------------
# Manipulation maps (--trace_checkpoint) and index.html
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imc_ckpts(ckpt, tmp_path_factory):
    """IMC checkpoints: at level 5 with the mask checkpoint's Featex (a half-freeze pair), and at level 0."""
    from mantra_jax.imc import taxonomy

    root = tmp_path_factory.mktemp("imc")
    _, mask_variables = checkpoint.load_model(ckpt)
    for name, level in (("L5", 5), ("L0", 0)):
        cfg = TINY.replace(head="imc", num_classes=taxonomy.LEVEL_SIZES[level])
        variables = jax.tree.map(np.asarray, model.init(jax.random.key(7 + level), cfg))
        variables["params"]["Featex"] = mask_variables["params"]["Featex"]
        checkpoint.save_model(root / name, cfg, variables)
    return root


def _summary(out):
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_trace_maps_alone_and_with_the_mask_and_the_page(folder, ckpt, imc_ckpts, tmp_path, capsys):
    from mantra_jax.imc import taxonomy
    from mantra_jax.infer import trace
    from tests.helpers import check_page

    stems = ["alpha", "colour", "deep", "grey", "colour-2"]
    alone, both = tmp_path / "alone", tmp_path / "both"
    assert predict.predict_folder(None, [str(folder)], alone, trace_checkpoint=imc_ckpts / "L5") == 0
    assert predict.predict_folder(ckpt, [str(folder)], both, trace_checkpoint=imc_ckpts / "L5", trace_level=1) == 0
    assert "Featex shared with the mask model" in capsys.readouterr().err
    assert json.loads((both / "run.json").read_text())["trace"]["featex_shared"] is True
    names = set(taxonomy.class_names(1))
    for out in (alone, both):
        assert sorted(p.name for p in out.glob("trace_legend_*.png")) == ["trace_legend_L1.png"]
        rows = _summary(out)
        assert list(rows[0]) == list(predict.SUMMARY_FIELDS + trace.TRACE_SUMMARY_FIELDS)
        assert [r["output"] for r in rows] == stems
        for row in rows:
            assert row["trace_level"] == "1" and row["trace_dominant"] in names
            assert 0 < float(row["trace_dominant_share"]) <= 1
            assert cv2.imread(str(out / f"{row['output']}_trace_L1.png")).shape == SHAPE + (3,)
        check_page(out, len(stems), [folder / "broken.png"])
    assert not list(alone.glob("*_mask.png")) and all(r["score"] == "" for r in _summary(alone))
    assert len(list(both.glob("*_mask.png"))) == len(stems) and all(float(r["score"]) > 0 for r in _summary(both))
    # Featex once or twice: the same maps (but for float32 near-ties).
    for stem in stems:
        a, b = (cv2.imread(str(out / f"{stem}_trace_L1.png")) for out in (alone, both))
        assert np.mean(np.all(a == b, axis=-1)) > 0.999
    first_row = check_page(both, len(stems), [folder / "broken.png"]).rows[0]["text"]
    assert any(name in first_row for name in names)  # the dominant class is shown


def test_wrong_kind_checkpoints_are_one_line_errors(folder, ckpt, imc_ckpts, tmp_path):
    image = str(folder / "colour.png")
    cases = [
        (f"cannot use the trace checkpoint {ckpt}: it is a ManTra-Net .* give it as --checkpoint",
         dict(checkpoint=None, trace_checkpoint=ckpt)),
        (f"cannot use the trace checkpoint {imc_ckpts / 'L0'}: the IMC checkpoint was trained at level 0",
         dict(checkpoint=ckpt, trace_checkpoint=imc_ckpts / "L0", trace_level=1)),
        ("give a ManTra-Net checkpoint", dict(checkpoint=None)),
    ]
    for message, kwargs in cases:
        with pytest.raises(UserError, match=message):
            predict.predict_folder(kwargs.pop("checkpoint"), [image], tmp_path / "o", **kwargs)
    done = _command("--checkpoint", imc_ckpts / "L5", "--out", tmp_path / "o", image)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: cannot use the checkpoint {imc_ckpts / 'L5'}: it is an IMC (manipulation type) checkpoint "
        "(head 'imc'), not a ManTra-Net (forgery mask) checkpoint: give it as --trace_checkpoint"]


class _counting_compilations:
    """Counts the programs XLA compiles inside the block (`.count`)."""

    active = None

    def __enter__(self):
        self.count = 0
        _counting_compilations.active = self
        return self

    def __exit__(self, *exc):
        _counting_compilations.active = None


def _on_duration_event(event, seconds, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration" and _counting_compilations.active is not None:
        _counting_compilations.active.count += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration_event)


def test_a_folder_of_distinct_sizes_compiles_a_bounded_number_of_programs(ckpt, tmp_path):
    """Every image size shares the tiled pass's programs: after the first image, further sizes
    (odd ones, thin ones, several tiles) compile nothing, and their maps are the whole-image ones."""
    cfg, variables = checkpoint.load_model(ckpt)
    small = predict.Predictor(cfg, variables, tile=24)
    with _counting_compilations() as first:
        small.predict(_photo((41, 37), seed=3))
    assert 1 <= first.count <= 4  # the two passes (and the host's small array conversions)
    sizes = [(43, 29), (30, 61), (67, 53), (19, 44), (52, 52)]
    photos = [_photo(size, seed=i) for i, size in enumerate(sizes)]
    with _counting_compilations() as rest:
        maps = [small.predict(rgb) for rgb in photos]
    assert rest.count == 0
    for rgb, prob in zip(photos, maps):
        np.testing.assert_allclose(prob, tiled.whole_image_probabilities(variables, rgb, cfg), atol=1e-5, rtol=0)
    folder = tmp_path / "sizes"
    folder.mkdir()
    for i, rgb in enumerate(photos):
        _write(folder / f"{i}.png", rgb[..., ::-1])
    with _counting_compilations() as run:  # the command's loop, its own Predictor (default tile)
        assert predict.predict_folder(ckpt, [str(folder)], tmp_path / "out") == 0
    assert run.count <= 4


def test_any_name_and_kind_of_file_in_a_folder_is_processed_or_listed(ckpt, tmp_path, capsys):
    images_dir = tmp_path / "in"
    images_dir.mkdir()
    odd = os.fsdecode(b"caf\xe9.png")  # not UTF-8
    long_name = "x" * 250 + ".png"  # 254 bytes: "<stem>_overlay.png" would pass 255
    for name in (odd, long_name, "plain.png"):
        _write(images_dir / name, _photo()[..., ::-1])
    os.mkfifo(images_dir / "fifo.png")  # would hang a run that opened it
    (images_dir / "notes.txt").write_text("x")
    out = tmp_path / "out"
    status, err = _cli([ckpt, [str(images_dir)], out], capsys)
    assert status == 0, err
    with open(out / "summary.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and any("caf\\udce9.png" in r["file"] for r in rows)
    assert all(len(os.fsencode(p.name)) <= 255 for p in out.iterdir())
    with open(out / "skipped.csv", newline="") as f:
        skipped = {Path(r["file"]).name: r["error"] for r in csv.DictReader(f)}
    assert set(skipped) == {"fifo.png", "notes.txt"} and "FIFO" in skipped["fifo.png"]
    page = (out / "index.html").read_bytes()
    assert b"http-equiv" not in page and b"caf%E9.png" in page  # the finished page, linking the odd name
