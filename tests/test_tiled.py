"""Tiled inference: tile geometry, image-wide moments, and equality with the whole-image pass."""
import jax
import numpy as np
import pytest

from mantra_jax.nn import config, ladn, layers, model, tiled

TINY = config.make_config(width_scale=0.125)


def _image(height, width, seed=0):
    """Smooth colour regions plus noise: local statistics vary, as in a photo."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (height // 8 + 2, width // 8 + 2, 3))
    smooth = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width]
    return np.clip(smooth + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("length,tile,halo", [(1, 4, 0), (10, 4, 0), (100, 24, 33), (100, 16, 14), (91, 30, 5),
                                              (83, 16, 33), (82, 16, 33), (7, 1, 2), (64, 64, 0)])
def test_axis_segments_partition_the_axis_with_exact_crops(length, tile, halo):
    segments = tiled.axis_segments(length, tile, halo)
    covered = np.zeros(length, int)
    sizes = set()
    for s in segments:
        covered[s.start : s.stop] += 1
        assert 0 <= s.crop_start <= s.start < s.stop <= s.crop_stop <= length
        # Every crop edge is a true image border or at least `halo` pixels from the interior.
        assert s.crop_start == 0 or s.start - s.crop_start >= halo
        assert s.crop_stop == length or s.crop_stop - s.stop >= halo
        sizes.add(s.crop_stop - s.crop_start)
    np.testing.assert_array_equal(covered, 1)
    assert sizes == {min(length, tile + 2 * halo)}  # one crop shape: one compilation
    if length > tile + 2 * halo:
        assert len(segments) == -(-length // tile)


def test_axis_segments_reject_a_bad_tile():
    with pytest.raises(ValueError, match="tile size"):
        tiled.axis_segments(10, 0, 2)


def test_moment_accumulator_matches_numpy_even_far_from_zero():
    rng = np.random.default_rng(3)
    blocks = [(1e4 + rng.normal(0, 1e-2, (n, 5))).astype(np.float32) for n in (1, 17, 300, 2)]
    acc = tiled._MomentAccumulator(5)
    for b in blocks:  # per-tile moments, as pass 1 computes them, merged across unequal tiles
        b = b.astype(np.float64)
        acc.merge(len(b), b.mean(0), np.square(b - b.mean(0)).sum(0))
    everything = np.concatenate(blocks).astype(np.float64)
    mean, std = acc.moments()
    np.testing.assert_allclose(mean, everything.mean(0), rtol=1e-7)
    np.testing.assert_allclose(std, everything.std(0), rtol=1e-4)


def test_pass1_tile_moments_cover_only_the_interior_and_store_in_place():
    cfg = TINY
    variables = jax.device_put(model.init(jax.random.key(1), cfg))
    rgb = _image(40, 50)
    stored = jax.numpy.full((40, 50, cfg.adapt_dim), -7.0)
    start, interior = np.asarray((4, 6), np.int32), np.asarray((3, 20, 5, 9), np.int32)  # crop coordinates
    new, mean, m2 = tiled.pass1_tile(variables, rgb, stored, start, interior, cfg=cfg, dtype=np.float32,
                                      size=(30, 40))
    rows, cols = slice(4 + 3, 4 + 20), slice(6 + 5, 6 + 9)
    crop = np.asarray(tiled.crop_features(variables, rgb, (4, 6), (30, 40), cfg, np.float32))
    block = crop[3:20, 5:9].reshape(-1, cfg.adapt_dim).astype(np.float64)
    np.testing.assert_allclose(np.asarray(mean), block.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(m2), np.square(block - block.mean(0)).sum(0), rtol=1e-4, atol=1e-5)
    new = np.asarray(new)
    np.testing.assert_allclose(new[rows, cols], crop[3:20, 5:9], atol=1e-5, rtol=0)  # two compilations
    outside = np.ones((40, 50), bool)
    outside[rows, cols] = False
    assert np.all(new[outside] == -7.0)  # only the interior is written
    assert stored.is_deleted()  # donated: the store is updated in place, not copied


@pytest.mark.parametrize(
    "anomaly,windows,use_global,shape,tile,recompute",
    [
        ("tac", (7, 15, 31), True, (100, 130), 32, True),  # the released windows: 4 x 5 tiles
        ("zf", (7,), True, (70, 90), 16, False),
        ("fac", (7, 15), True, (70, 90), 16, False),
        ("df", (7, 15, 31), True, (100, 130), 32, False),
        ("tac", (7, 15), False, (70, 90), 16, False),
    ],
)
def test_tiled_equals_whole_image(anomaly, windows, use_global, shape, tile, recompute):
    cfg = TINY.replace(anomaly=anomaly, windows=windows, use_global=use_global)
    variables = jax.device_put(model.init(jax.random.key(1), cfg))
    rgb = _image(*shape)
    whole = tiled.whole_image_probabilities(variables, rgb, cfg)
    kept = tiled.tiled_probabilities(variables, rgb, cfg, tile=tile)
    assert kept.shape == shape and kept.dtype == np.float32
    assert whole.std() > 1e-3  # a map with structure, so a misplaced tile would show
    np.testing.assert_allclose(kept, whole, atol=1e-4, rtol=0)
    if recompute:  # the other way to pass 2: Featex recomputed per crop instead of kept features
        recomputed = tiled.tiled_probabilities(variables, rgb, cfg, tile=tile, feature_budget_bytes=0)
        np.testing.assert_allclose(recomputed, whole, atol=1e-4, rtol=0)


def test_smaller_halos_break_the_equality():
    """The agreement above needs the halos: one pixel less of Featex halo, or no LADN halo, fails."""
    cfg = TINY.replace(windows=(7, 15))
    variables = jax.device_put(model.init(jax.random.key(1), cfg))
    rgb = _image(70, 90)
    whole = tiled.whole_image_probabilities(variables, rgb, cfg)
    halo_featex, halo_ladn = tiled.halos(cfg)
    for halo in ((halo_featex - 1, halo_ladn), (halo_featex, 0)):
        short = tiled.tiled_probabilities(variables, rgb, cfg, tile=16, halo_override=halo)
        assert np.abs(short - whole).max() > 1e-4, halo


@pytest.mark.parametrize("anomaly,windows", [("tac", (7, 15, 31)), ("fac", (7, 15)), ("zf", (7,))])
def test_ladn_receptive_radius_bounds_the_local_part(anomaly, windows):
    """With the image-wide moments fixed, a change of the adapted features at one pixel changes
    the logits only within ladn.receptive_radius (the LADN halo of the tiled pass)."""
    cfg = TINY.replace(anomaly=anomaly, windows=windows)
    params = model.init(jax.random.key(2), cfg)["params"]
    r = ladn.receptive_radius(cfg)
    size = 2 * r + 11
    y = jax.random.normal(jax.random.key(3), (1, size, size, cfg.adapt_dim))
    mean, std = ladn.global_moments(y)

    @jax.jit
    def logits(features):
        return ladn.decide(params, ladn.anomaly_features(params, features, mean, std, cfg))[0]

    c = size // 2
    change = np.abs(np.asarray(logits(y.at[0, c, c].add(3.0)) - logits(y)))
    # The window means come from prefix sums, so the change also moves float rounding (~1e-7)
    # everywhere below and right of the pixel: only changes above that count.
    rows, cols = np.nonzero(change > 1e-4)
    assert change.max() > 1e-2
    assert rows.min() >= c - r and rows.max() <= c + r
    assert cols.min() >= c - r and cols.max() <= c + r


def test_bad_inputs_are_named():
    variables = model.init(jax.random.key(0), TINY)
    with pytest.raises(ValueError, match="uint8 H x W x 3"):
        tiled.tiled_probabilities(variables, np.zeros((8, 8, 3), np.float32), TINY)
    with pytest.raises(ValueError, match="uint8 H x W x 3"):
        tiled.whole_image_probabilities(variables, np.zeros((8, 8), np.uint8), TINY)
    imc = TINY.replace(head="imc", num_classes=5)
    with pytest.raises(ValueError, match="imc"):
        tiled.tiled_probabilities(model.init(jax.random.key(0), imc), np.zeros((8, 8, 3), np.uint8), imc)



@pytest.mark.parametrize("length,tile,halo", [(1, 4, 0), (10, 4, 0), (100, 24, 33), (100, 16, 14), (91, 30, 5),
                                              (83, 16, 33), (7, 1, 2), (64, 64, 0), (76, 16, 30)])
def test_canvas_segments_partition_the_axis_into_crops_that_fit_the_canvas(length, tile, halo):
    segments = tiled.canvas_segments(length, tile, halo)
    assert segments[0].start == 0 and segments[-1].stop == length
    for a, b in zip(segments, segments[1:]):
        assert a.stop == b.start  # interiors partition the axis
    for s in segments:
        assert 0 <= s.crop_start <= s.start < s.stop <= s.crop_stop <= length
        assert s.crop_stop - s.crop_start <= tile + 2 * halo  # fits the canvas
        # each crop edge is an image border or a full halo away from the interior
        assert s.crop_start == 0 or s.start - s.crop_start >= halo
        assert s.crop_stop == length or s.crop_stop - s.stop >= halo


@pytest.mark.parametrize(
    "anomaly,windows,use_global,shapes,tile",
    [
        ("tac", (7, 15, 31), True, [(100, 131), (37, 61), (17, 90)], 32),  # several tiles, one, a thin one
        ("zf", (7,), True, [(45, 53)], 16),
        ("fac", (7, 15), True, [(45, 53)], 16),
        ("df", (7, 15), True, [(45, 53)], 16),
        ("tac", (7, 15), False, [(45, 53)], 16),
    ],
)
def test_canvas_pass_equals_whole_image_at_odd_sizes(anomaly, windows, use_global, shapes, tile):
    cfg = TINY.replace(anomaly=anomaly, windows=windows, use_global=use_global)
    variables = jax.device_put(model.init(jax.random.key(1), cfg))
    for shape in shapes:
        rgb = _image(*shape, seed=sum(shape))
        whole = tiled.whole_image_probabilities(variables, rgb, cfg)
        got = tiled.canvas_probabilities(variables, rgb, cfg, tile=tile)
        assert got.shape == shape and got.dtype == np.float32 and whole.std() > 1e-3
        np.testing.assert_allclose(got, whole, atol=1e-5, rtol=0)


def test_reflect_beyond_is_symmetric_padding_at_the_extent():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 9, 11, 2)).astype(np.float32)
    canvas = np.full((1, 14, 15, 2), np.nan, np.float32)
    canvas[:, :9, :11] = image
    out = np.asarray(layers.reflect_beyond(jax.numpy.asarray(canvas), (9, 11), 3))
    padded = np.pad(image, ((0, 0), (0, 3), (0, 3), (0, 0)), mode="symmetric")
    np.testing.assert_array_equal(out[:, :12, :14], padded)
