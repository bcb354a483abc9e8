"""Tests for mantra_jax.data.forgeries: the four synthetic forgery generators."""
import functools

import cv2
import numpy as np
import pytest

from mantra_jax.data import forgeries, masks

NO_TRANSFORM = dict(resize_prob=0.0, rotate_prob=0.0)


def _texture(seed, size=64):
    """A random RGB texture, smoothed a little so that inpainting has structure to follow."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (3, 3), 0.8)


def _coordinate_image(size=64, offset=0):
    """Pixel (y, x) holds (y, x, offset): where a pixel came from can be read off its value."""
    rows, cols = np.mgrid[0:size, 0:size]
    return np.stack([rows, cols, np.full_like(rows, offset)], -1).astype(np.uint8)


def _blur(image, rng):
    del rng
    return cv2.GaussianBlur(image, (5, 5), 1.5)


def _mask(seed, size=64, kind=None):
    return masks.random_mask(np.random.default_rng(1000 + seed), size, size, kind=kind)


def _generate(kind, seed, size=64, **kwargs):
    patch, donor = _texture(seed, size), _texture(seed + 500, size)
    mask = _mask(seed, size)
    rng = np.random.default_rng(seed)
    if kind == "splicing":
        image, forged = forgeries.splicing(patch, donor, mask, rng, **kwargs)
    elif kind == "copy_move":
        image, forged = forgeries.copy_move(patch, mask, rng, **kwargs)
    elif kind == "removal":
        image, forged = forgeries.removal(patch, mask, rng, **kwargs)
    else:
        image, forged = forgeries.enhancement(patch, mask, rng, _blur, **kwargs)
    return patch, mask, image, forged


# --------------------------------------------------------------------------------------------
# Properties shared by all generators
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", forgeries.FORGERY_TYPES)
def test_generators_are_deterministic_per_seed(kind):
    _, _, image, forged = _generate(kind, 3)
    _, _, image_again, forged_again = _generate(kind, 3)
    assert image.tobytes() == image_again.tobytes()
    assert forged.tobytes() == forged_again.tobytes()


@pytest.mark.parametrize("kind", forgeries.FORGERY_TYPES)
@pytest.mark.parametrize("size", [64, 256])
def test_only_pixels_in_the_returned_mask_change(kind, size):
    for seed in range(6 if size == 64 else 2):
        patch, mask, image, forged = _generate(kind, seed, size)
        assert image.dtype == np.uint8 and image.shape == patch.shape
        assert forged.dtype == np.uint8 and forged.shape == mask.shape
        assert set(np.unique(forged)) <= {0, 1} and forged.any()
        outside = forged == 0
        np.testing.assert_array_equal(image[outside], patch[outside])
        assert (image != patch).any()
        if kind in ("enhancement", "removal"):
            np.testing.assert_array_equal(forged, mask)
        if kind == "splicing":
            assert not (forged & (1 - mask)).any(), "pasted outside the given mask"


# --------------------------------------------------------------------------------------------
# Blending
# --------------------------------------------------------------------------------------------
def test_inward_alpha_matches_a_brute_force_distance():
    mask = masks.random_mask(np.random.default_rng(5), 32, 32, kind="blobs",
                             area_range=(0.3, 0.3))
    feather = 4.0
    inside = np.argwhere(mask == 1)
    outside = np.argwhere(mask == 0)
    distance = np.sqrt(((inside[:, None, :] - outside[None, :, :]) ** 2).sum(-1)).min(1)
    expected = np.zeros(mask.shape, np.float32)
    expected[tuple(inside.T)] = np.minimum(distance / min(feather, distance.max()), 1.0)
    np.testing.assert_allclose(forgeries.inward_alpha(mask, feather), expected, atol=1e-3)
    np.testing.assert_array_equal(forgeries.inward_alpha(mask, 1.0), mask)


def test_hard_enhancement_is_the_papers_formula():
    patch, mask = _texture(0), _mask(0)
    image, forged = forgeries.enhancement(patch, mask, np.random.default_rng(0), _blur,
                                          feather_prob=0.0)
    expected = np.where(mask[..., None] == 1, _blur(patch, None), patch)
    np.testing.assert_array_equal(image, expected)
    np.testing.assert_array_equal(forged, mask)


def test_feathered_enhancement_blends_towards_the_outline():
    patch = _texture(1)
    mask = masks.random_mask(np.random.default_rng(2), 64, 64, kind="blobs",
                             area_range=(0.4, 0.4))
    image, _ = forgeries.enhancement(patch, mask, np.random.default_rng(0), _blur,
                                     feather_prob=1.0, feather_range=(4.0, 4.0))
    alpha = forgeries.inward_alpha(mask, 4.0)
    blurred = _blur(patch, None).astype(np.float32)
    expected = np.rint(patch + alpha[..., None] * (blurred - patch)).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)
    assert ((alpha > 0) & (alpha < 1)).any() and (alpha == 1).any()


def test_enhancement_uses_the_imc_bank_by_default():
    pytest.importorskip("mantra_jax.imc.manipulations")
    patch, mask = _texture(2), _mask(2)
    image, forged = forgeries.enhancement(patch, mask, np.random.default_rng(4))
    again, _ = forgeries.enhancement(patch, mask, np.random.default_rng(4))
    assert image.tobytes() == again.tobytes()
    np.testing.assert_array_equal(image[forged == 0], patch[forged == 0])


# --------------------------------------------------------------------------------------------
# Removal
# --------------------------------------------------------------------------------------------
def test_removal_changes_the_masked_region():
    for seed in range(6):
        patch, mask, image, _ = _generate("removal", seed)
        inside = mask == 1
        change = np.abs(image[inside].astype(int) - patch[inside].astype(int)).mean()
        assert change > 5.0


def test_removal_matches_opencv_inpainting_inside_the_mask():
    patch, mask = _texture(3), _mask(3)
    image, _ = forgeries.removal(patch, mask, np.random.default_rng(0), radius_range=(3, 3))
    candidates = [cv2.inpaint(patch, mask, 3, method)
                  for method in (cv2.INPAINT_TELEA, cv2.INPAINT_NS)]
    assert any(np.array_equal(image, c) for c in candidates)


# --------------------------------------------------------------------------------------------
# Splicing
# --------------------------------------------------------------------------------------------
def _source_offsets(image, region):
    """(dy, dx) from each pixel of `region` to where its coordinate-coded value came from."""
    rows, cols = np.nonzero(region)
    return image[rows, cols, 0].astype(int) - rows, image[rows, cols, 1].astype(int) - cols


def test_unfeathered_splice_copies_donor_pixels_by_one_shift():
    donor = _coordinate_image(offset=77)
    for seed in range(8):
        patch, mask = _texture(seed), _mask(seed)
        image, pasted = forgeries.splicing(patch, donor, mask, np.random.default_rng(seed),
                                           feather_prob=0.0, **NO_TRANSFORM)
        np.testing.assert_array_equal(pasted, mask)  # same-size donor covers the mask
        assert (image[pasted == 1, 2] == 77).all()
        dy, dx = _source_offsets(image, pasted)
        assert len(set(dy)) == 1 and len(set(dx)) == 1


def test_feathered_splice_equals_the_donor_in_the_interior_only():
    donor = _coordinate_image(offset=77)
    patch = _texture(4)
    mask = masks.random_mask(np.random.default_rng(9), 64, 64, kind="blobs",
                             area_range=(0.3, 0.3))
    image, pasted = forgeries.splicing(patch, donor, mask, np.random.default_rng(1),
                                       feather_prob=1.0, feather_range=(3.0, 3.0),
                                       **NO_TRANSFORM)
    alpha = forgeries.inward_alpha(pasted, 3.0)
    interior = alpha == 1
    assert (image[interior, 2] == 77).all()
    dy, dx = _source_offsets(image, interior)
    assert len(set(dy)) == 1 and len(set(dx)) == 1
    rim = (alpha > 0) & (alpha < 0.5)
    assert (image[rim, 2] != 77).any()


def test_splice_from_a_small_donor_marks_only_where_donor_pixels_landed():
    patch = _texture(5)
    donor = np.full((20, 24, 3), 200, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[4:60, 4:60] = 1
    image, pasted = forgeries.splicing(patch, donor, mask, np.random.default_rng(0),
                                       feather_prob=0.0, **NO_TRANSFORM)
    assert pasted.sum() == 20 * 24
    assert (image[pasted == 1] == 200).all()
    np.testing.assert_array_equal(image[pasted == 0], patch[pasted == 0])


def test_transformed_splice_pastes_donor_colours():
    # A uniform donor stays uniform under any resampling, so every fully pasted pixel has its
    # colour, rotated and scaled or not.
    donor = np.full((64, 64, 3), (10, 250, 40), np.uint8)
    for seed in range(6):
        patch, mask = _texture(seed), _mask(seed)
        image, pasted = forgeries.splicing(patch, donor, mask, np.random.default_rng(seed),
                                           resize_prob=1.0, rotate_prob=1.0, feather_prob=0.0)
        assert pasted.any()
        assert (image[pasted == 1] == (10, 250, 40)).all()


# --------------------------------------------------------------------------------------------
# Copy-move
# --------------------------------------------------------------------------------------------
def test_copy_move_copies_source_pixels_to_a_displaced_target():
    patch = _coordinate_image(offset=5)
    for seed in range(8):
        source = _mask(seed)
        image, target = forgeries.copy_move(patch, source, np.random.default_rng(seed),
                                            scale_prob=0.0, rotate_prob=0.0, feather_prob=0.0)
        dy, dx = _source_offsets(image, target)
        assert len(set(dy)) == 1 and len(set(dx)) == 1
        assert np.hypot(dy[0], dx[0]) >= 0.1 * 64
        rows, cols = np.nonzero(target)
        assert source[rows + dy, cols + dx].all(), "copied from outside the source"
        assert (target & (1 - source)).any(), "target lies within the source"
        np.testing.assert_array_equal(image[target == 0], patch[target == 0])


def test_subpixel_copy_move_is_resampled_not_copied():
    """With subpixel_prob=1 an unscaled, unrotated copy lands between pixels: bilinear
    interpolation of a texture, so no whole-pixel shift reproduces its interior."""
    for seed in range(6):
        patch, source = _texture(seed), _mask(seed)
        exact, exact_target = forgeries.copy_move(patch, source, np.random.default_rng(seed), scale_prob=0.0,
                                                  rotate_prob=0.0, feather_prob=0.0)
        image, target = forgeries.copy_move(patch, source, np.random.default_rng(seed), scale_prob=0.0,
                                            rotate_prob=0.0, feather_prob=0.0, subpixel_prob=1.0)
        np.testing.assert_array_equal(image[target == 0], patch[target == 0])

        def best_integer_match(img, region):
            rows, cols = np.nonzero(region)
            best = 0.0
            for dy in range(-63, 64):
                for dx in range(-63, 64):
                    r, c = rows + dy, cols + dx
                    ok = (r >= 0) & (r < 64) & (c >= 0) & (c < 64)
                    if ok.mean() < 0.9:
                        continue
                    best = max(best, float((img[rows[ok], cols[ok]] == patch[r[ok], c[ok]]).all(axis=1).mean()))
            return best

        assert best_integer_match(exact, exact_target) == 1.0  # the default: an exact copy
        assert best_integer_match(image, target) < 0.5


def test_synthesized_copy_moves_are_always_resampled():
    """synthesize draws its copy-moves with COPY_MOVE_SUBPIXEL_PROB (1: never an exact copy)."""
    assert forgeries.COPY_MOVE_SUBPIXEL_PROB == 1.0
    patch = _texture(3)
    for seed in range(4):
        image, mask, _ = forgeries.synthesize("copy_move", patch, None, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        rng.random()  # the pristine-share draw
        region = masks.random_mask(rng, 64, 64)
        expected, expected_mask = forgeries.copy_move(patch, region, rng, subpixel_prob=1.0)
        np.testing.assert_array_equal(image, expected)
        np.testing.assert_array_equal(mask, expected_mask)


@pytest.mark.parametrize("kind", forgeries.FORGERY_TYPES)
def test_forge_is_the_generator_of_its_kind_on_the_given_mask(kind):
    patch, donor, mask = _texture(4), _texture(504), _mask(4)
    forged = forgeries.forge(kind, patch, donor, mask, np.random.default_rng(4), manipulate=_blur, subpixel_prob=0.0)
    rng = np.random.default_rng(4)
    expected = {"splicing": lambda: forgeries.splicing(patch, donor, mask, rng),
                "copy_move": lambda: forgeries.copy_move(patch, mask, rng),  # subpixel_prob 0: the default
                "removal": lambda: forgeries.removal(patch, mask, rng),
                "enhancement": lambda: forgeries.enhancement(patch, mask, rng, _blur)}[kind]()
    for got, want in zip(forged, expected):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="unknown forgery kind"):
        forgeries.forge("inpaint", patch, None, mask, rng)


def test_copy_move_marks_the_source_only_on_request():
    patch, source = _texture(6), _mask(6)
    image, target = forgeries.copy_move(patch, source, np.random.default_rng(2))
    image_marked, both = forgeries.copy_move(patch, source, np.random.default_rng(2),
                                             mark_source=True)
    np.testing.assert_array_equal(image, image_marked)
    np.testing.assert_array_equal(both, target | source)


def test_copy_move_of_a_nearly_full_mask_still_moves_something():
    patch = _coordinate_image()
    source = np.ones((64, 64), np.uint8)
    source[:6, :6] = 0
    image, target = forgeries.copy_move(patch, source, np.random.default_rng(0),
                                        scale_prob=0.0, rotate_prob=0.0, feather_prob=0.0)
    assert (target & (1 - source)).any()
    np.testing.assert_array_equal(image[target == 0], patch[target == 0])


def test_transformed_copy_move_keeps_outside_pixels():
    for seed in range(6):
        patch, source = _texture(seed), _mask(seed)
        image, target = forgeries.copy_move(patch, source, np.random.default_rng(seed),
                                            scale_prob=1.0, rotate_prob=1.0)
        assert target.any()
        np.testing.assert_array_equal(image[target == 0], patch[target == 0])


# --------------------------------------------------------------------------------------------
# Post-processing and the sampler
# --------------------------------------------------------------------------------------------
def test_postprocess_keeps_shape_and_is_deterministic():
    image = _texture(7, 96)[:, :80]
    kwargs = dict(jpeg_prob=0.5, downscale_prob=0.5)
    for seed in range(6):
        out = forgeries.postprocess(image, np.random.default_rng(seed), **kwargs)
        assert out.shape == image.shape and out.dtype == np.uint8
        again = forgeries.postprocess(image, np.random.default_rng(seed), **kwargs)
        assert out.tobytes() == again.tobytes()


def test_postprocess_jpeg_matches_an_opencv_round_trip():
    image = _texture(8)
    out = forgeries.postprocess(image, np.random.default_rng(0), jpeg_prob=1.0,
                                jpeg_quality_range=(70, 70), downscale_prob=0.0)
    _, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                              [cv2.IMWRITE_JPEG_QUALITY, 70])
    expected = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(out, expected)


def test_postprocess_downscale_removes_fine_detail():
    image = _texture(9)
    out = forgeries.postprocess(image, np.random.default_rng(0), jpeg_prob=0.0,
                                downscale_prob=1.0, downscale_range=(0.5, 0.5))
    laplacian = lambda x: np.abs(cv2.Laplacian(x.astype(np.float32), cv2.CV_32F)).mean()
    assert laplacian(out) < 0.7 * laplacian(image)
    untouched = forgeries.postprocess(image, np.random.default_rng(0), jpeg_prob=0.0,
                                      downscale_prob=0.0)
    np.testing.assert_array_equal(untouched, image)


@pytest.mark.parametrize("kind", forgeries.FORGERY_TYPES)
def test_synthesize_is_deterministic_and_labels_the_kind(kind):
    patch, donor = _texture(10), _texture(11)
    run = functools.partial(forgeries.synthesize, kind, patch, donor, manipulate=_blur,
                            postprocess_kwargs=dict(jpeg_prob=0.5, downscale_prob=0.5))
    image, mask, kind_id = run(np.random.default_rng(3))
    image_again, mask_again, _ = run(np.random.default_rng(3))
    assert image.tobytes() == image_again.tobytes() and mask.tobytes() == mask_again.tobytes()
    assert kind_id == forgeries.FORGERY_TYPES.index(kind)
    assert image.shape == patch.shape and mask.shape == patch.shape[:2] and mask.any()


def test_synthesize_pristine_share_one_returns_untouched_patches():
    patch, donor = _texture(12), _texture(13)
    for seed in range(5):
        image, mask, kind_id = forgeries.synthesize(None, patch, donor,
                                                    np.random.default_rng(seed),
                                                    pristine_share=1.0)
        assert kind_id == forgeries.PRISTINE_ID
        assert mask.dtype == np.uint8 and mask.shape == (64, 64) and not mask.any()
        np.testing.assert_array_equal(image, patch)
    # Post-processing applies to pristine samples too.
    image, _, _ = forgeries.synthesize("removal", patch, None, np.random.default_rng(0),
                                       pristine_share=1.0,
                                       postprocess_kwargs=dict(jpeg_prob=1.0))
    assert (image != patch).any()


def test_synthesize_mixes_kinds_and_pristine_samples():
    patch, donor = _texture(14, 32), _texture(15, 32)
    ids = [forgeries.synthesize(None, patch, donor, np.random.default_rng(seed),
                                pristine_share=0.3, manipulate=_blur)[2]
           for seed in range(200)]
    ids = np.array(ids)
    assert set(ids) == {forgeries.PRISTINE_ID, 0, 1, 2, 3}
    assert 0.2 < (ids == forgeries.PRISTINE_ID).mean() < 0.4


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("patch, mask, message", [
    (np.zeros((64, 64, 3), np.float32), np.ones((64, 64), np.uint8), "uint8"),
    (np.zeros((64, 64), np.uint8), np.ones((64, 64), np.uint8), "H x W x 3"),
    (np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.uint8), "minimum"),
    (np.zeros((64, 64, 3), np.uint8), np.ones((32, 64), np.uint8), "does not match"),
    (np.zeros((64, 64, 3), np.uint8), np.full((64, 64), 2, np.uint8), r"\{0, 1\}"),
    (np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8), "empty"),
    (np.zeros((64, 64, 3), np.uint8), np.ones((64, 64), np.float32), "uint8"),
])
def test_bad_inputs_raise_clear_errors(patch, mask, message):
    rng = np.random.default_rng(0)
    calls = [
        lambda: forgeries.enhancement(patch, mask, rng, _blur),
        lambda: forgeries.removal(patch, mask, rng),
        lambda: forgeries.splicing(patch, _texture(0), mask, rng),
        lambda: forgeries.copy_move(patch, mask, rng),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()


def test_sampler_and_callable_errors():
    patch = _texture(0)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown forgery kind"):
        forgeries.synthesize("inpaint", patch, None, rng)
    with pytest.raises(ValueError, match="donor"):
        forgeries.synthesize("splicing", patch, None, rng)
    with pytest.raises(ValueError, match="pristine_share"):
        forgeries.synthesize("removal", patch, None, rng, pristine_share=1.5)
    with pytest.raises(ValueError, match="manipulate must return"):
        forgeries.enhancement(patch, _mask(0), rng, lambda image, r: image[:32])
    with pytest.raises(ValueError, match="Generator"):
        forgeries.removal(patch, _mask(0), 0)


def test_splice_with_another_history_pastes_the_processed_donor():
    donor = _coordinate_image(offset=77)
    patch, mask = _texture(3), _mask(3)
    plain, pasted = forgeries.splicing(patch, donor, mask, np.random.default_rng(3), feather_prob=0.0, **NO_TRANSFORM)
    processed, pasted2 = forgeries.splicing(patch, donor, mask, np.random.default_rng(3), feather_prob=0.0,
                                            donor_manipulate=lambda image, rng: 255 - image, **NO_TRANSFORM)
    np.testing.assert_array_equal(pasted, pasted2)
    inside = pasted == 1
    np.testing.assert_array_equal(processed[inside], 255 - plain[inside])  # the same pixels, processed
    np.testing.assert_array_equal(processed[~inside], patch[~inside])


def test_donor_history_draws_nothing_at_probability_zero_and_changes_splices_above():
    patch, donor = _texture(5, 96), _texture(6, 96)
    for seed in range(4):
        default = forgeries.synthesize("splicing", patch, donor, np.random.default_rng(seed))
        zero = forgeries.synthesize("splicing", patch, donor, np.random.default_rng(seed), donor_history_prob=0.0)
        np.testing.assert_array_equal(default[0], zero[0])  # earlier recipes keep their samples
    changed = [not np.array_equal(forgeries.synthesize("splicing", patch, donor, np.random.default_rng(s))[0],
                                  forgeries.synthesize("splicing", patch, donor, np.random.default_rng(s),
                                                       donor_history_prob=1.0)[0]) for s in range(4)]
    assert any(changed)
