"""Manipulation maps: the per-pixel IMC head against numpy, level mapping, palette, tiling, and the
mask and trace from one Featex run."""
import csv

import cv2
import jax
import numpy as np
import pytest

from mantra_jax.infer import predict
from mantra_jax.imc import taxonomy
from mantra_jax.infer import trace
from mantra_jax.nn import config, featex
from tests.helpers import random_variables

# A shallow, narrow network: compiles in seconds; receptive radius 6, so 48 x 40 images make tiles.
SHALLOW = ((4,), (8, 8))
IMC = config.make_config(width_scale=0.125, widths=SHALLOW, head="imc", num_classes=taxonomy.LEVEL_SIZES[5])
MASK = config.make_config(width_scale=0.125, widths=SHALLOW, windows=(7,))


def _image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (height // 8 + 2, width // 8 + 2, 3))
    smooth = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width]
    return np.clip(smooth + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def imc_variables():
    return random_variables(IMC, 0)


def _reference_probs(variables, rgb):
    """Softmax of the IMC head applied at every pixel, in numpy, on Featex's (jax) features."""
    x = rgb.astype(np.float32) * (2.0 / 255.0) - 1.0
    feat = np.asarray(featex.apply(variables["params"]["Featex"], x[None], IMC), np.float64)[0]
    kernel = np.asarray(variables["params"]["imc"]["kernel"], np.float64)
    padded = np.pad(feat, ((1, 1), (1, 1), (0, 0)), mode="symmetric")
    h, w = feat.shape[:2]
    logits = np.asarray(variables["params"]["imc"]["bias"], np.float64) + sum(
        padded[dy : dy + h, dx : dx + w] @ kernel[dy, dx] for dy in range(3) for dx in range(3))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("level", [5, 1, 0])
def test_class_maps_match_a_numpy_head_mapped_by_the_taxonomy(imc_variables, level):
    rgb = _image(32, 32)
    probs = taxonomy.map_prediction(_reference_probs(imc_variables, rgb), 5, level, kind="probs")
    got = trace.Tracer(IMC, imc_variables, level=level).trace(rgb)
    assert got.level == level and got.class_map.dtype == np.int32 and got.class_map.shape == (32, 32)
    np.testing.assert_allclose(got.top_prob, probs.max(-1), rtol=1e-4, atol=1e-6)
    top2 = np.sort(probs, -1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-6  # near-ties may flip at float32
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(got.class_map[clear], probs.argmax(-1)[clear])


def test_a_level_finer_than_the_checkpoint_or_a_mask_model_is_refused(imc_variables):
    coarse = IMC.replace(num_classes=taxonomy.LEVEL_SIZES[1])
    with pytest.raises(ValueError, match="level 1: maps at level 3"):
        trace.Tracer(coarse, random_variables(coarse, 1), level=3)
    with pytest.raises(ValueError, match="need an IMC checkpoint"):
        trace.checkpoint_level(MASK)
    with pytest.raises(ValueError, match="no taxonomy level"):
        trace.checkpoint_level(IMC.replace(num_classes=11))


def test_tiled_maps_equal_the_whole_image_map(imc_variables):
    rgb = _image(48, 40, seed=1)
    whole = trace.Tracer(IMC, imc_variables, level=1).trace(rgb)
    tracer = trace.Tracer(IMC, imc_variables, level=1, tile=8)
    assert featex.receptive_radius(IMC) + 1 == 7  # 48 x 40: 6 x 5 tiles of 22 x 22 pixels
    tiles = tracer.trace(rgb)
    np.testing.assert_array_equal(tiles.class_map, whole.class_map)
    np.testing.assert_allclose(tiles.top_prob, whole.top_prob, rtol=1e-5, atol=1e-6)


def test_the_palette_is_fixed_and_distinct():
    colours = trace.palette(5)
    assert colours.shape == (380, 3) and colours.dtype == np.uint8
    # Pinned: a change of the palette changes every trace map ever written.
    assert colours[:4].tolist() == [[0, 0, 255], [255, 0, 0], [0, 255, 0], [0, 255, 255]]
    assert colours[26].tolist() == [187, 68, 68] and colours[379].tolist() == trace.palette(5)[379].tolist()
    for level in range(taxonomy.LEVELS):
        np.testing.assert_array_equal(trace.palette(level), colours[: taxonomy.num_classes(level)])
        assert len({tuple(c) for c in trace.palette(level)}) == taxonomy.num_classes(level)
    level1 = trace.palette(1).astype(int)
    assert len(level1) == 27
    closest = min(trace._redmean_sq(level1[:i], level1[i]).min() for i in range(1, 27))
    assert np.sqrt(closest / 512) > 100  # far apart (the RGB cube's diagonal is 765)
    assert not any((c == trace.UNCERTAIN_RGB).all() for c in colours)


def test_confidence_is_the_share_of_the_way_from_chance_to_certainty():
    k1, k5 = taxonomy.num_classes(1), taxonomy.num_classes(5)
    np.testing.assert_allclose(trace.confidence([1 / k1, 1.0, 0.001], 1), [0.0, 1.0, 0.0], atol=1e-6)
    # The same answer strength reads the same at every level: p = K^-0.65 gives 0.35 at any K.
    np.testing.assert_allclose(trace.confidence([k1 ** -0.65], 1), [0.35], atol=1e-5)
    np.testing.assert_allclose(trace.confidence([k5 ** -0.65], 5), [0.35], atol=1e-5)


def test_trace_image_legend_and_summary(tmp_path):
    class_map = np.array([[0, 0, 0, 2], [0, 0, 1, 2]], np.int32)
    top = np.array([[1.0, 0.9, 0.2, 0.9], [0.9, 1 / 27, 0.6, 0.4]], np.float32)
    t = trace.TraceMap(class_map, top, 1)
    # Without a photo: the class colour at full confidence, mid grey at chance or below the threshold.
    image = trace.trace_image(t, threshold=0.5)
    full = np.rint((1 - trace.TRACE_MAX_ALPHA) * np.asarray(trace.UNCERTAIN_RGB) + trace.TRACE_MAX_ALPHA
                   * trace.palette(1)[0]).astype(np.uint8)
    assert image[0, 0].tolist() == full.tolist()
    assert image[0, 2].tolist() == list(trace.UNCERTAIN_RGB) == image[1, 3].tolist() == image[1, 1].tolist()
    # Over a photo, drawn in grey: the photo alone where the model says nothing, the class colour
    # the more opaque the surer it is.
    photo = np.zeros((2, 4, 3), np.uint8)
    photo[..., 0] = 200  # a red photo: grey level 60
    grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)[0, 0]
    over = trace.trace_image(t, rgb=photo).astype(int)
    assert over[1, 1].tolist() == [grey] * 3  # at chance: the grey photo
    colour = trace.palette(1)[0].astype(int)
    assert np.abs(over[0, 0] - colour).sum() < np.abs(over[0, 1] - colour).sum() < np.abs(grey - colour).sum()
    path = tmp_path / trace.trace_png_name("a photo", 1)
    trace.write_trace_png(path, t, 0.5)
    read = cv2.cvtColor(cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(read, image)
    legend = trace.write_legend_png(tmp_path, 5)
    assert legend.name == "trace_legend_L5.png" and cv2.imdecode(np.fromfile(legend, np.uint8), 1).shape[1] > 1000

    # The summary counts what the map shows: by default every pixel, with a threshold those above it.
    names = taxonomy.class_names(1)
    row = trace.trace_summary(t)
    assert tuple(row) == trace.TRACE_SUMMARY_FIELDS
    assert row["trace_dominant"] == names[0] and row["trace_dominant_share"] == pytest.approx(5 / 8)
    assert row["trace_others"] == f"{names[2]}=0.2500; {names[1]}=0.1250" and row["trace_below_threshold"] == 0
    row = trace.trace_summary(t, threshold=0.5)
    assert row["trace_dominant"] == names[0] and row["trace_dominant_share"] == pytest.approx(3 / 8)
    assert row["trace_others"] == f"{names[1]}=0.1250; {names[2]}=0.1250"
    assert row["trace_below_threshold"] == pytest.approx(3 / 8)
    assert trace.trace_summary(t, threshold=1.5)["trace_dominant"] == ""  # nothing drawn, nothing named
    with open(tmp_path / "summary.csv", "w", newline="") as f:  # flat: one csv row
        csv.DictWriter(f, fieldnames=trace.TRACE_SUMMARY_FIELDS).writerows([row])


@pytest.mark.parametrize("tile", [None, 8])
def test_mask_and_trace_share_featex_and_equal_the_separate_runs(imc_variables, tile):
    mask_variables = random_variables(MASK, 2)
    mask_variables["params"]["Featex"] = imc_variables["params"]["Featex"]  # a half-freeze model
    rgb = _image(48, 40, seed=2)
    predictor = predict.Predictor(MASK, mask_variables, tile=tile)
    tracer = trace.Tracer(IMC, imc_variables, level=1, tile=tile)
    both = trace.MaskAndTrace(predictor, tracer)
    assert both.shared
    prob, t = both(rgb)
    np.testing.assert_allclose(prob, predict.Predictor(MASK, mask_variables).predict(rgb), atol=2e-5)
    alone = trace.Tracer(IMC, imc_variables, level=1).trace(rgb)
    np.testing.assert_array_equal(t.class_map, alone.class_map)
    np.testing.assert_allclose(t.top_prob, alone.top_prob, rtol=1e-5, atol=1e-6)

    other = jax.tree.map(lambda a: a, mask_variables)
    other["params"]["Featex"] = random_variables(MASK, 3)["params"]["Featex"]
    assert not trace.MaskAndTrace(predict.Predictor(MASK, other), tracer).shared
