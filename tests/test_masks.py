"""Tests for mantra_jax.data.masks: random structured masks."""
import cv2
import numpy as np
import pytest

from mantra_jax.data import masks

SEEDS = range(120)


def _sample(kind, size=64, seeds=SEEDS):
    return [masks.random_mask(np.random.default_rng(seed), size, size, kind=kind)
            for seed in seeds]


def _touches_border(mask):
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def _num_regions(mask):
    num_labels, _ = cv2.connectedComponents(mask)
    return num_labels - 1


@pytest.mark.parametrize("kind", masks.MASK_KINDS + (None,))
def test_same_seed_same_mask_and_other_seed_other_mask(kind):
    first = masks.random_mask(np.random.default_rng(7), 96, 80, kind=kind)
    again = masks.random_mask(np.random.default_rng(7), 96, 80, kind=kind)
    other = masks.random_mask(np.random.default_rng(8), 96, 80, kind=kind)
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


@pytest.mark.parametrize("kind", masks.MASK_KINDS)
def test_masks_are_binary_partial_and_cover_tiny_to_large(kind):
    samples = _sample(kind)
    coverage = np.array([m.mean() for m in samples])
    for mask in samples:
        assert mask.dtype == np.uint8 and mask.shape == (64, 64)
        assert set(np.unique(mask)) == {0, 1}
        assert mask.sum() >= masks.MIN_MASK_PIXELS
    assert coverage.max() < 1.0
    assert (coverage < 0.015).any(), "no tiny mask"
    assert (coverage > 0.3).any(), "no large mask"
    # Log-uniform areas: small masks are common, large ones rarer but present.
    assert 0.02 < np.median(coverage) < 0.2


@pytest.mark.parametrize("kind", masks.MASK_KINDS)
def test_some_masks_touch_the_border_and_some_have_several_regions(kind):
    samples = _sample(kind)
    touching = np.array([_touches_border(m) for m in samples])
    regions = np.array([_num_regions(m) for m in samples])
    assert 0.15 < touching.mean() < 0.9
    assert (regions == 1).any() and (regions >= 2).any()


def test_non_square_masks_have_the_requested_shape():
    for kind in masks.MASK_KINDS:
        mask = masks.random_mask(np.random.default_rng(0), 48, 112, kind=kind)
        assert mask.shape == (48, 112)


def test_area_follows_the_requested_fraction():
    for seed in range(10):
        rng = np.random.default_rng(seed)
        # Blobs threshold a field at the exact quantile; strokes stop once they reach it.
        blob = masks.random_mask(rng, 64, 64, kind="blobs", area_range=(0.2, 0.2))
        assert abs(blob.mean() - 0.2) < 0.005
        strokes = masks.random_mask(rng, 64, 64, kind="strokes", area_range=(0.2, 0.2))
        assert 0.2 <= strokes.mean() < 0.35


def test_kind_none_draws_every_kind():
    # kind=None spends one draw on the kind, then generates exactly that kind's mask.
    kinds_seen = set()
    for seed in range(12):
        unspecified = masks.random_mask(np.random.default_rng(seed), 64, 64)
        rng = np.random.default_rng(seed)
        kind = masks.MASK_KINDS[int(rng.integers(len(masks.MASK_KINDS)))]
        assert unspecified.tobytes() == masks.random_mask(rng, 64, 64, kind=kind).tobytes()
        kinds_seen.add(kind)
    assert kinds_seen == set(masks.MASK_KINDS)


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "circles"}, "unknown mask kind"),
    ({"height": 8}, "below the minimum"),
    ({"area_range": (0.5, 0.1)}, "area_range"),
    ({"area_range": (0.1, 1.0)}, "area_range"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        masks.random_mask(np.random.default_rng(0), **kwargs)


def test_rng_must_be_a_generator():
    with pytest.raises(ValueError, match="Generator"):
        masks.random_mask(0)
