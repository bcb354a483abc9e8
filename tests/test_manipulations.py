"""Tests for mantra_jax.imc.manipulations: every leaf's contract, the registry, and parameter order."""

import pickle

import cv2
import numpy as np
import pytest
from skimage import data

from mantra_jax.imc import manipulations, taxonomy


def _by_param(type_name):
    """The leaves of a type in increasing parameter order; double JPEG by (Q2, Q1)."""
    members = manipulations.of_type(type_name)
    if type_name == "JPEGDoubleCompress":
        return sorted(members, key=lambda m: m.param[::-1])
    return sorted(members, key=lambda m: m.param)


@pytest.fixture(scope="module")
def photo():
    """A real photo, 96x96."""
    return cv2.resize(data.astronaut(), (96, 96), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def test_images(photo):
    flat = np.empty((32, 32, 3), np.uint8)
    flat[:] = (90, 140, 200)
    odd = np.ascontiguousarray(data.chelsea()[101:138, 203:256])  # 37 x 53, real content
    smallest = np.ascontiguousarray(data.coffee()[200:208, 300:308])  # 8 x 8
    return {"photo": photo, "flat": flat, "odd": odd, "smallest": smallest}


def _run(manipulation, image, seed=0):
    return manipulations.apply(manipulation.leaf, image, np.random.default_rng(seed))


def _high_frequency_energy(image):
    x = image.astype(np.float64)
    return np.mean(np.diff(x, axis=0) ** 2) + np.mean(np.diff(x, axis=1) ** 2)


def _mse(a, b):
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def test_every_leaf_keeps_dtype_shape_and_is_deterministic(test_images):
    for name, image in test_images.items():
        before = image.copy()
        for manipulation in manipulations.REGISTRY:
            out = _run(manipulation, image)
            assert out.dtype == np.uint8 and out.shape == image.shape, (name, manipulation.label)
            assert out.flags.c_contiguous and out.flags.writeable, (name, manipulation.label)
            np.testing.assert_array_equal(out, _run(manipulation, image), err_msg=f"{name} {manipulation.label}")
        np.testing.assert_array_equal(image, before, err_msg=f"a leaf modified its input ({name})")


def test_non_contiguous_input_gives_same_bytes(photo):
    view = photo[::2, ::2]
    for label in ("JPEGCompress-Q70", "BoxBlur-K5", "GaussianNoise-S13", "Quantization-C50"):
        manipulation = manipulations.get(label)
        np.testing.assert_array_equal(_run(manipulation, view), _run(manipulation, view.copy()))


def test_noise_depends_on_seed_and_other_leaves_do_not(photo):
    for manipulation in manipulations.REGISTRY:
        differs = not np.array_equal(_run(manipulation, photo, seed=1), _run(manipulation, photo, seed=2))
        assert differs == (manipulation.family == "noise"), manipulation.label


def test_all_leaves_change_a_real_photo(photo):
    # AutoContrast-C0 is a min-max stretch; the photo's channels nearly span 0..255, so allow it.
    for manipulation in manipulations.REGISTRY:
        if manipulation.label != "AutoContrast-C0":
            assert not np.array_equal(_run(manipulation, photo), photo), manipulation.label


def test_filters_keep_a_flat_patch_flat(test_images):
    flat = test_images["flat"]
    for family in ("blur", "resampling", "morphology"):
        for manipulation in manipulations.of_family(family):
            np.testing.assert_array_equal(_run(manipulation, flat), flat, err_msg=manipulation.label)
    for manipulation in manipulations.of_family("compression"):
        assert np.abs(_run(manipulation, flat).astype(int) - flat).max() <= 8, manipulation.label


@pytest.mark.parametrize("type_name", ["BoxBlur", "GaussianBlur", "MedianBlur", "WaveletBlur"])
def test_larger_blur_kernel_removes_more_high_frequencies(photo, type_name):
    energies = [_high_frequency_energy(_run(m, photo)) for m in _by_param(type_name)]
    assert _high_frequency_energy(photo) > energies[0]
    assert np.all(np.diff(energies) < 0), energies


@pytest.mark.parametrize(
    "type_name",
    ["JPEGCompress", "WEBPCompress", "AREAResize", "CUBICResize", "LANCZOS4Resize", "LINEARResize", "Quantization"],
)
def test_lower_quality_or_scale_gives_larger_error(photo, type_name):
    errors = [_mse(_run(m, photo), photo) for m in _by_param(type_name)]
    assert np.all(np.diff(errors) < 0), errors


def test_nearest_resize_error_falls_with_scale_overall(photo):
    # Nearest-neighbour aliasing makes neighbouring scales swap (an integer factor such as
    # s=0.25 aliases less than s=0.31); the trend must still hold.
    errors = [_mse(_run(m, photo), photo) for m in _by_param("NEARESTResize")]
    assert np.corrcoef(np.arange(len(errors)), errors)[0, 1] < -0.8
    assert errors[0] == max(errors) and errors[-1] == min(errors)


def test_double_jpeg_differs_from_single_jpeg_at_second_quality(photo):
    for manipulation in manipulations.of_type("JPEGDoubleCompress"):
        first, second = manipulation.param
        single = _run(manipulations.get(f"JPEGCompress-Q{second}"), photo)
        double = _run(manipulation, photo)
        assert not np.array_equal(double, single), manipulation.label
        # It is exactly: decode(encode(decode(encode(x, Q1)), Q2)).
        once = _run(manipulations.get(f"JPEGCompress-Q{first}"), photo)
        np.testing.assert_array_equal(double, _run(manipulations.get(f"JPEGCompress-Q{second}"), once))


@pytest.mark.parametrize("operation,direction", [("Dilate", 1), ("Erode", -1)])
def test_larger_structuring_element_is_pointwise_stronger(photo, operation, direction):
    outputs = [_run(m, photo).astype(int) for m in _by_param(f"{operation}Morph")]
    for smaller, larger in zip(outputs, outputs[1:]):
        assert np.all(direction * (larger - smaller) >= 0)
    assert np.all(direction * (outputs[0] - photo.astype(int)) >= 0)


@pytest.mark.parametrize("operation", ["Close", "Open"])
def test_larger_close_open_changes_more(photo, operation):
    errors = [_mse(_run(m, photo), photo) for m in _by_param(f"{operation}Morph")]
    assert np.all(np.diff(errors) > 0), errors


def test_noise_units():
    """Gaussian S and Poisson L are standard deviations in levels (Poisson at grey 128), impulse P a
    percentage of pixels, uniform M the half-width of an integer uniform draw."""
    grey = np.full((128, 128, 3), 128, np.uint8)
    for manipulation in manipulations.of_family("noise"):
        noise = _run(manipulation, grey, seed=3).astype(np.float64) - 128
        p = manipulation.param
        if manipulation.type in ("GaussianNoise", "PoissonNoise"):
            assert noise.std() == pytest.approx(p, rel=0.03), manipulation.label
            assert abs(noise.mean()) < 0.1 * p
        elif manipulation.type == "ImpluseNoise":
            hit = (noise != 0).any(axis=-1)
            assert 100 * hit.mean() == pytest.approx(p, rel=0.1), manipulation.label
            assert set(np.unique(noise[hit])) == {-128.0, 127.0}
        else:
            assert noise.min() == -p and noise.max() == p, manipulation.label
            assert noise.std() == pytest.approx(np.sqrt(p * (p + 1) / 3), rel=0.03)


def test_poisson_noise_grows_with_intensity():
    # Levels far enough from 0 and 255 that clipping does not shrink the spread.
    dark = np.full((64, 64, 3), 50, np.uint8)
    bright = np.full((64, 64, 3), 200, np.uint8)
    manipulation = manipulations.get("PoissonNoise-L11")
    dark_std = (_run(manipulation, dark).astype(float) - 50).std()
    bright_std = (_run(manipulation, bright).astype(float) - 200).std()
    assert dark_std == pytest.approx(11 * np.sqrt(50 / 128), rel=0.05)
    assert bright_std == pytest.approx(11 * np.sqrt(200 / 128), rel=0.05)


def test_noise_strength_grows_with_parameter(photo):
    for type_name in ("GaussianNoise", "ImpluseNoise", "PoissonNoise", "UniformNoise"):
        errors = [_mse(_run(m, photo), photo) for m in _by_param(type_name)]
        assert np.all(np.diff(errors) > 0), type_name


def test_quantization_uses_at_most_c_colours(photo):
    for manipulation in manipulations.of_type("Quantization"):
        colours = np.unique(_run(manipulation, photo).reshape(-1, 3), axis=0)
        assert len(colours) <= manipulation.param


def test_dithering_uses_web_palette_and_keeps_mean_colour(test_images):
    dithering = manipulations.get("Dithering")
    flat = test_images["flat"]
    out = _run(dithering, flat)
    assert set(np.unique(out)) <= set(range(0, 256, 51))
    # Error diffusion preserves the local mean that plain nearest-colour mapping would lose.
    np.testing.assert_allclose(out.reshape(-1, 3).mean(axis=0), flat[0, 0], atol=3)
    assert len(np.unique(out.reshape(-1, 3), axis=0)) > 1


def test_auto_contrast_clips_c_percent_and_stretches(photo):
    low_contrast = (60 + photo.astype(np.float64) * 0.4).astype(np.uint8)
    for manipulation in _by_param("AutoContrast"):
        out = _run(manipulation, low_contrast)
        for channel in range(3):
            values = out[..., channel]
            assert values.min() == 0 and values.max() == 255
            clipped_low = 100 * np.mean(values == 0)
            clipped_high = 100 * np.mean(values == 255)
            # At least C percent lands on each end (ties may add a little more).
            assert clipped_low >= manipulation.param - 0.5
            assert clipped_high >= manipulation.param - 0.5
    errors = [_mse(_run(m, low_contrast), low_contrast) for m in _by_param("AutoContrast")]
    assert np.all(np.diff(errors) > 0), errors


def test_auto_contrast_zero_is_min_max_stretch(photo):
    low_contrast = (60 + photo.astype(np.float64) * 0.4).astype(np.uint8)
    out = _run(manipulations.get("AutoContrast-C0"), low_contrast).astype(np.float64)
    x = low_contrast.astype(np.float64)
    lo, hi = x.min(axis=(0, 1)), x.max(axis=(0, 1))
    expected = np.clip(np.rint((x - lo) * 255.0 / (hi - lo)), 0, 255)
    np.testing.assert_array_equal(out, expected)


def _equalize_reference(channel):
    # Textbook equalisation: the lowest occupied level goes to 0, the CDF is stretched to 0..255.
    hist = np.bincount(channel.ravel(), minlength=256)
    cdf = np.cumsum(hist)
    first = cdf[np.flatnonzero(hist)[0]]
    lut = np.clip(np.rint((cdf - first) * 255.0 / (channel.size - first)), 0, 255)
    return lut[channel]


def test_hist_eq_mask_selects_rgb_channels(photo):
    low_contrast = (60 + photo.astype(np.float64) * 0.4).astype(np.uint8)
    for manipulation in manipulations.of_type("HistEq"):
        out = _run(manipulation, low_contrast)
        for channel, bit in enumerate((1, 2, 4)):
            if manipulation.param & bit:
                expected = _equalize_reference(low_contrast[..., channel])
                # OpenCV accumulates its scale in float32: allow one level of rounding.
                assert np.abs(out[..., channel] - expected).max() <= 1, manipulation.label
            else:
                np.testing.assert_array_equal(out[..., channel], low_contrast[..., channel])


def test_registry_matches_taxonomy():
    assert manipulations.NUM_LEAVES == len(manipulations.REGISTRY) == 380
    for leaf, (manipulation, record) in enumerate(zip(manipulations.REGISTRY, taxonomy.LEAF_TABLE)):
        assert manipulation.leaf == record.leaf == leaf
        assert (manipulation.label, manipulation.type, manipulation.family, manipulation.param) == (
            record.label, record.type, record.family, record.param_value
        )
        assert manipulations.get(leaf) is manipulation
        assert manipulations.get(np.int64(leaf)) is manipulation
        assert manipulations.get(record.label) is manipulation


def test_lookups_by_type_and_family():
    assert len(manipulations.types()) == 24
    assert manipulations.families() == list(taxonomy.FAMILY_NAMES)
    assert sum(len(manipulations.of_type(t)) for t in manipulations.types()) == 380
    assert len(manipulations.of_type("JPEGDoubleCompress")) == 64
    assert len(manipulations.of_family("blur")) == 52
    assert manipulations.of_family(6) == manipulations.of_family("contrast")
    assert len(manipulations.of_family("contrast")) == 15
    with pytest.raises(KeyError, match="Sharpen"):
        manipulations.of_type("Sharpen")
    with pytest.raises(KeyError):
        manipulations.of_family(7)
    with pytest.raises(KeyError, match="BoxBlur-K4"):
        manipulations.get("BoxBlur-K4")


def test_registry_pickles_for_worker_processes(photo):
    restored = pickle.loads(pickle.dumps(manipulations.REGISTRY))
    for label in ("MedianBlur-K9", "JPEGDoubleCompress-Q95/40", "UniformNoise-M9", "Dithering"):
        manipulation = manipulations.get(label)
        again = restored[manipulation.leaf]
        np.testing.assert_array_equal(
            again.fn(photo, np.random.default_rng(5)), manipulation.fn(photo, np.random.default_rng(5))
        )


def test_sample_leaf_is_uniform_and_seeded():
    draws = [manipulations.sample_leaf(np.random.default_rng(7)) for _ in range(3)]
    assert draws[0] == draws[1] == draws[2]
    rng = np.random.default_rng(8)
    counts = np.bincount([manipulations.sample_leaf(rng) for _ in range(38000)], minlength=380)
    assert counts.min() > 0 and len(counts) == 380
    chi_square = np.sum((counts - 100.0) ** 2 / 100.0)
    assert chi_square < 380 + 5 * np.sqrt(2 * 380)  # 5 sigma above its mean under uniformity


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((16, 16, 3), np.float32), "uint8"),
        (np.zeros((16, 16), np.uint8), "H x W x 3"),
        (np.zeros((16, 16, 4), np.uint8), "H x W x 3"),
        (np.zeros((7, 16, 3), np.uint8), "at least 8x8"),
        ([[0]], "numpy"),
    ],
)
def test_apply_rejects_bad_images(image, match):
    with pytest.raises(ValueError, match=match):
        manipulations.apply(0, image, np.random.default_rng(0))


def test_apply_rejects_bad_leaves():
    image = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="0..379"):
        manipulations.apply(380, image, np.random.default_rng(0))
    with pytest.raises(TypeError):
        manipulations.apply(1.5, image, np.random.default_rng(0))
