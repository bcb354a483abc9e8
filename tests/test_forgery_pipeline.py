"""Tests for mantra_jax.data.forgery_pipeline: samples, type mix, workers, state, shards, val."""

import numpy as np
import pytest

from mantra_jax.data import forgeries, forgery_pipeline, photos, stream
from mantra_jax.data.photos import PatchEntry
from tests.helpers import (
    assert_restore_continues_the_stream,
    assert_same_batches,
    assert_workers_change_nothing,
    take_batches,
    write_photo_folder,
)

FORGED_IDS = set(range(len(forgeries.FORGERY_TYPES)))


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """Synthetic 256 x 512 textured photos: 4 in the train split, 2 in val (2 patches each)."""
    root = write_photo_folder(tmp_path_factory.mktemp("forgery_photos"), {"train": 4, "val": 2}, width=512, subfolders=3)
    built = photos.build_patch_index(root, use_cache=False)
    assert (len(built.train), len(built.val), len(built.test)) == (8, 4, 0)
    return built


def _batches(index, n, **kwargs):
    kwargs = {"seed": 3, "batch_size": 4, "patch_size": 64, **kwargs}
    iterator = iter(forgery_pipeline.make_train_dataset(index, **kwargs))
    batches = take_batches(iterator, n)
    if hasattr(iterator, "close"):
        iterator.close()
    return batches


def _count(kinds):
    values, counts = np.unique(list(kinds), return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def _assert_masks_match_kinds(batch):
    forged_pixels = batch["mask"].reshape(len(batch["kind"]), -1).sum(axis=1)
    for kind, pixels in zip(batch["kind"], forged_pixels):
        if kind == forgeries.PRISTINE_ID:
            assert pixels == 0
        else:
            assert kind in FORGED_IDS and pixels > 0


def test_type_weights_are_validated_and_normalised():
    np.testing.assert_allclose(
        forgery_pipeline.type_probabilities((1, 0, 3, 0)), [0.25, 0, 0.75, 0]
    )
    for bad, message in [
        ((1, 1, 1), "one weight per forgery type"),
        ((1, 1, 1, 1, 1), "one weight per forgery type"),
        ((1, -1, 1, 1), "non-negative"),
        ((1, float("nan"), 1, 1), "non-negative"),
        ((0, 0, 0, 0), "all zero"),
        (("a", 1, 1, 1), "4 numbers"),
    ]:
        with pytest.raises(ValueError, match=message):
            forgery_pipeline.type_probabilities(bad)


def test_bad_arguments_fail_before_any_sample(index):
    with pytest.raises(ValueError, match="all zero"):
        forgery_pipeline.make_train_dataset(index, seed=0, batch_size=2, type_weights=(0, 0, 0, 0))
    with pytest.raises(ValueError, match="pristine_share"):
        forgery_pipeline.make_train_dataset(index, seed=0, batch_size=2, pristine_share=1.5)
    with pytest.raises(ValueError, match="patch_size"):
        forgery_pipeline.make_train_dataset(index, seed=0, batch_size=2, patch_size=512)
    with pytest.raises(ValueError, match="postprocess: invalid arguments"):
        forgery_pipeline.make_train_dataset(index, seed=0, batch_size=2, postprocess={"quality": 5})
    with pytest.raises(ValueError, match="unknown split"):
        forgery_pipeline.make_train_dataset(index, seed=0, batch_size=2, split="dev")
    with pytest.raises(ValueError, match="at least one patch"):
        forgery_pipeline.make_train_dataset(index, seed=0, batch_size=2, split="test")
    with pytest.raises(ValueError, match="pristine_share must be in \\[0, 1\\)"):
        forgery_pipeline.make_val_batches(
            index, seed=0, n_per_type=1, batch_size=2, pristine_share=1.0
        )


def test_donors_come_from_another_photo_when_there_is_one():
    places = [("b.png", 0), ("a.png", 0), ("b.png", 256), ("c.png", 0)]
    entries = [PatchEntry(path, y, 0) for path, y in places]
    picker = forgery_pipeline.DonorPicker(entries)
    rng = np.random.default_rng(0)
    for i, entry in enumerate(entries):
        drawn = [picker(i, rng) for _ in range(200)]
        others = {j for j, e in enumerate(entries) if e.path != entry.path}
        # Every patch of another photo is drawn, and nothing else.
        assert set(drawn) == others
    same = [picker(2, np.random.default_rng(9)) for _ in range(2)]
    assert same[0] == same[1]

    one_photo = forgery_pipeline.DonorPicker([PatchEntry("a.png", y, 0) for y in (0, 256, 512)])
    assert {one_photo(1, rng) for _ in range(100)} == {0, 2}
    assert forgery_pipeline.DonorPicker([PatchEntry("a.png", 0, 0)])(0, rng) == 0


@pytest.mark.parametrize("kind_id", [forgeries.PRISTINE_ID, *sorted(FORGED_IDS)])
def test_sample_forges_the_window_and_nothing_else(index, kind_id):
    source = stream.PatchSource(index.root, index.train, index.patch_size)
    patch, donor = source[0], source[5]
    crop_y, crop_x, size = 40, 100, 96
    window = patch[crop_y : crop_y + size, crop_x : crop_x + size]
    sample = forgery_pipeline.forgery_sample(
        patch, donor, kind_id, crop_y, crop_x, size, np.random.default_rng(kind_id + 10)
    )
    image, mask = sample["image"], sample["mask"]
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert mask.shape == (size, size) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert sample["kind"] == kind_id and sample["kind"].dtype == np.int32
    # Outside the forged region the pixels are exactly the pristine window's.
    outside = mask == 0
    np.testing.assert_array_equal(image[outside], window[outside])
    if kind_id == forgeries.PRISTINE_ID:
        assert not mask.any()
    else:
        assert mask.any() and not np.array_equal(image[~outside], window[~outside])
    with pytest.raises(ValueError, match="lies outside"):
        forgery_pipeline.forgery_sample(
            patch, donor, kind_id, 200, 0, size, np.random.default_rng(0)
        )


def test_train_batches_shapes_dtypes_and_masks(index):
    batches = _batches(index, 3, patch_size=256, pristine_share=0.4)
    for batch in batches:
        assert batch.keys() == {"image", "mask", "kind"}
        assert batch["image"].shape == (4, 256, 256, 3) and batch["image"].dtype == np.uint8
        assert batch["mask"].shape == (4, 256, 256) and batch["mask"].dtype == np.uint8
        assert batch["kind"].shape == (4,) and batch["kind"].dtype == np.int32
        assert set(np.unique(batch["mask"])) <= {0, 1}
        _assert_masks_match_kinds(batch)
    kinds = np.concatenate([b["kind"] for b in batches])
    assert forgeries.PRISTINE_ID in kinds and len(set(kinds.tolist()) & FORGED_IDS) >= 2
    assert_same_batches(batches, _batches(index, 3, patch_size=256, pristine_share=0.4))
    other_seed = _batches(index, 3, patch_size=256, pristine_share=0.4, seed=4)
    assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(batches, other_seed))


@pytest.mark.parametrize(
    "weights, allowed", [((0, 0, 0, 1), {3}), ((1, 0, 0, 0), {0}), ((0, 2, 1, 0), {1, 2})]
)
def test_type_weights_select_the_forgery_types(index, weights, allowed):
    batches = _batches(index, 3, type_weights=weights)
    kinds = np.concatenate([b["kind"] for b in batches])
    assert set(kinds.tolist()) == allowed
    for batch in batches:
        _assert_masks_match_kinds(batch)


def test_pristine_share_one_gives_only_empty_masks_and_postprocess_reaches_them(index):
    plain = _batches(index, 2, pristine_share=1.0)
    for batch in plain:
        assert (batch["kind"] == forgeries.PRISTINE_ID).all() and not batch["mask"].any()
    # With JPEG always on at a fixed quality, each pristine window comes back re-encoded,
    # exactly as postprocess encodes it (no random draw matters at a fixed quality).
    jpeg_kwargs = {"jpeg_prob": 1.0, "jpeg_quality_range": (80, 80), "downscale_prob": 0.0}
    jpeg = _batches(index, 2, pristine_share=1.0, postprocess=jpeg_kwargs)
    for a, b in zip(plain, jpeg):
        assert not b["mask"].any() and not np.array_equal(a["image"], b["image"])
        for window, encoded in zip(a["image"], b["image"]):
            expected = forgeries.postprocess(window, np.random.default_rng(0), **jpeg_kwargs)
            np.testing.assert_array_equal(encoded, expected)


def test_iterator_state_restore_continues_the_stream(index):
    assert_restore_continues_the_stream(
        lambda: forgery_pipeline.make_train_dataset(index, seed=1, batch_size=2, patch_size=64))


def test_zero_and_two_workers_give_identical_batches_and_state(index):
    assert_workers_change_nothing(lambda workers: forgery_pipeline.make_train_dataset(
        index, seed=11, batch_size=2, patch_size=64, pristine_share=0.2, worker_count=workers,
        prefetch_buffer=1))


def test_shards_of_two_processes_differ(index):
    shards = [_batches(index, 2, shard_index=s, shard_count=2) for s in (0, 1)]
    for a, b in zip(*shards):
        assert not np.array_equal(a["image"], b["image"])
    assert_same_batches(shards[1], _batches(index, 2, shard_index=1, shard_count=2))
    with pytest.raises(ValueError, match="shard_index"):
        forgery_pipeline.make_train_dataset(
            index, seed=0, batch_size=2, shard_index=2, shard_count=2
        )


def test_val_plan_balances_types_and_patches(index):
    def build():
        return forgery_pipeline.make_val_plan(
            index.val, seed=0, n_per_type=3, pristine_share=0.25, patch_size=128
        )

    plan = build()
    assert plan == build()
    counts = _count(s.kind for s in plan)
    assert counts == {0: 3, 1: 3, 2: 3, 3: 3, forgeries.PRISTINE_ID: 4}
    per_patch = np.unique([index.val.index(s.entry) for s in plan], return_counts=True)[1]
    assert len(per_patch) == len(index.val) and per_patch.max() - per_patch.min() <= 1
    for s in plan:
        assert 0 <= s.crop_y <= 128 and 0 <= s.crop_x <= 128
        if s.kind == 0:
            assert s.donor in index.val and s.donor.path != s.entry.path
        else:
            assert s.donor is None
    with pytest.raises(ValueError, match="validation split has no patch"):
        forgery_pipeline.make_val_plan((), seed=0, n_per_type=1)
    with pytest.raises(ValueError, match="n_per_type"):
        forgery_pipeline.make_val_plan(index.val, seed=0, n_per_type=0)


def test_val_batches_are_fixed_padded_and_per_type(index):
    def build():
        return forgery_pipeline.make_val_batches(
            index, seed=5, n_per_type=2, batch_size=3, patch_size=64
        )

    batches = build()
    assert_same_batches(batches, build())
    assert len(batches) == 3
    for batch in batches:
        assert batch.keys() == {"image", "mask", "kind", "weight"}
        assert batch["image"].shape == (3, 64, 64, 3) and batch["mask"].shape == (3, 64, 64)
        assert batch["weight"].dtype == np.float32 and batch["kind"].dtype == np.int32
        _assert_masks_match_kinds(batch)
    weights = np.concatenate([b["weight"] for b in batches])
    np.testing.assert_array_equal(weights, [1] * 8 + [0])
    kinds = np.concatenate([b["kind"] for b in batches])[weights == 1]
    assert _count(kinds) == {0: 2, 1: 2, 2: 2, 3: 2}
    np.testing.assert_array_equal(batches[-1]["image"][2], batches[-1]["image"][1])
    # The plan decides the content: rebuilding sample 7 by hand gives the same sample.
    sample = forgery_pipeline.make_val_plan(index.val, seed=5, n_per_type=2, patch_size=64)[7]
    source = stream.PatchSource(index.root, index.val)
    donor = None if sample.donor is None else source.patch(sample.donor)
    expected = forgery_pipeline.forgery_sample(
        source.patch(sample.entry), donor, sample.kind, sample.crop_y, sample.crop_x, 64,
        np.random.default_rng(sample.noise_seed),
    )
    for key in expected:
        np.testing.assert_array_equal(batches[2][key][1], expected[key], err_msg=key)


def test_self_donors_are_the_patch_itself_and_draw_nothing_at_zero():
    entries = [PatchEntry(path, 0, 0) for path in ("a.png", "b.png", "c.png")]
    picker = forgery_pipeline.DonorPicker(entries)
    assert {picker.pick(1, np.random.default_rng(s), 1.0) for s in range(20)} == {1}
    drawn = [picker.pick(1, np.random.default_rng(s), 0.5) for s in range(200)]
    assert 60 < drawn.count(1) < 140 and set(drawn) == {0, 1, 2}
    for s in range(5):  # probability 0: exactly the draws of the plain picker
        assert picker.pick(0, np.random.default_rng(s), 0.0) == picker(0, np.random.default_rng(s))


def test_trace_synthesis_options_reach_training_and_validation(index):
    plain = _batches(index, 2, type_weights=(1, 0, 0, 0))
    traced = _batches(index, 2, type_weights=(1, 0, 0, 0), self_donor_prob=1.0, donor_history_prob=1.0)
    assert not np.array_equal(plain[0]["image"], traced[0]["image"])
    assert _batches(index, 1, type_weights=(1, 0, 0, 0), self_donor_prob=1.0)[0]["image"].shape == (4, 64, 64, 3)
    val = dict(seed=0, n_per_type=2, batch_size=4, patch_size=64)
    a = forgery_pipeline.make_val_batches(index, **val)
    b = forgery_pipeline.make_val_batches(index, **val, self_donor_prob=1.0, donor_history_prob=1.0,
                                          postprocess={"jpeg_prob": 1.0})
    assert not np.array_equal(np.concatenate([x["image"] for x in a]), np.concatenate([x["image"] for x in b]))
    with pytest.raises(ValueError, match="self_donor_prob must be in"):
        _batches(index, 1, self_donor_prob=float("nan"))
