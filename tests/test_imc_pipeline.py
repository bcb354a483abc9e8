"""Tests for mantra_jax.data.imc_pipeline: samples, determinism, workers, state, shards, val."""

import numpy as np
import pytest

from mantra_jax.data import imc_pipeline, photos, stream
from mantra_jax.imc import manipulations, taxonomy
from tests.helpers import (
    assert_restore_continues_the_stream,
    assert_same_batches,
    assert_workers_change_nothing,
    take_batches,
    write_photo_folder,
)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """Synthetic 256 x 512 textured photos: 4 in the train split, 2 in val."""
    root = write_photo_folder(tmp_path_factory.mktemp("imc_photos"), {"train": 4, "val": 2}, width=512, subfolders=3)
    built = photos.build_patch_index(root, use_cache=False)
    assert (len(built.train), len(built.val), len(built.test)) == (8, 4, 0)
    return built


def test_imc_sample_is_manipulation_then_crop(index):
    source = stream.PatchSource(index.root, index.train, index.patch_size)
    patch = source[0]
    leaf = 123
    sample = imc_pipeline.imc_sample(patch, leaf, 10, 70, 128, 2, np.random.default_rng(5))
    reference = manipulations.apply(leaf, patch, np.random.default_rng(5))[10:138, 70:198]
    np.testing.assert_array_equal(sample["image"], reference)
    assert sample["label"] == taxonomy.leaf_to_level(leaf, 2) and sample["leaf"] == leaf


def test_train_batches_shapes_labels_and_seed(index):
    level = 3
    iterator = iter(imc_pipeline.make_train_dataset(index, seed=7, batch_size=3, level=level))
    batches = take_batches(iterator, 3)
    for batch in batches:
        assert batch["image"].shape == (3, 128, 128, 3) and batch["image"].dtype == np.uint8
        assert batch["label"].dtype == np.int32 and batch["leaf"].dtype == np.int32
        assert batch["leaf"].min() >= 0 and batch["leaf"].max() < manipulations.NUM_LEAVES
        np.testing.assert_array_equal(batch["label"], taxonomy.leaf_to_level(batch["leaf"], level))
    again = take_batches(iter(imc_pipeline.make_train_dataset(index, seed=7, batch_size=3, level=level)), 3)
    assert_same_batches(batches, again)
    other = take_batches(iter(imc_pipeline.make_train_dataset(index, seed=8, batch_size=3, level=level)), 3)
    assert not all(np.array_equal(a["leaf"], b["leaf"]) for a, b in zip(batches, other))


def test_iterator_state_restore_continues_the_stream(index):
    assert_restore_continues_the_stream(
        lambda: imc_pipeline.make_train_dataset(index, seed=1, batch_size=2, level=5))


def test_zero_and_two_workers_give_identical_batches_and_state(index):
    assert_workers_change_nothing(lambda workers: imc_pipeline.make_train_dataset(
        index, seed=11, batch_size=2, worker_count=workers, prefetch_buffer=1))


def test_the_process_count_changes_the_samples_and_a_repeat_does_not(index):
    """What the README promises: the same process count repeats a stream exactly; another process
    count trains on other samples (each shard draws its own), so its numbers differ."""
    def global_batches(shard_count):
        shards = [take_batches(iter(imc_pipeline.make_train_dataset(
            index, seed=0, batch_size=4 // shard_count, level=0, crop=32, shard_index=i,
            shard_count=shard_count)), 2) for i in range(shard_count)]
        return [{k: np.concatenate([s[b][k] for s in shards]) for k in shards[0][b]} for b in range(2)]

    def contents(batch):  # the samples, whatever their order in the batch
        return sorted(image.tobytes() + leaf.tobytes() for image, leaf in zip(batch["image"], batch["leaf"]))

    one, two = global_batches(1), global_batches(2)
    assert_same_batches(two, global_batches(2))
    assert all(contents(a) != contents(b) for a, b in zip(one, two))


def test_val_plan_is_balanced_over_leaves_and_patches(index):
    plan = imc_pipeline.make_val_plan(index.val, seed=0, n_samples=2 * manipulations.NUM_LEAVES)
    assert plan == imc_pipeline.make_val_plan(index.val, seed=0, n_samples=2 * manipulations.NUM_LEAVES)
    leaves = np.bincount([s.leaf for s in plan], minlength=manipulations.NUM_LEAVES)
    assert (leaves == 2).all()
    per_patch = np.unique([index.val.index(s.entry) for s in plan], return_counts=True)[1]
    assert per_patch.max() - per_patch.min() <= 1 and len(per_patch) == len(index.val)
    assert all(0 <= s.crop_y <= 128 and 0 <= s.crop_x <= 128 for s in plan)
    with pytest.raises(ValueError, match="validation split has no patch"):
        imc_pipeline.make_val_plan((), seed=0, n_samples=4)


def test_val_batches_are_fixed_and_padded(index):
    batches = imc_pipeline.make_val_batches(index, seed=3, n_samples=5, batch_size=2, level=1)
    assert_same_batches(batches, imc_pipeline.make_val_batches(index, seed=3, n_samples=5, batch_size=2, level=1))
    assert len(batches) == 3
    for batch in batches:
        assert batch["image"].shape == (2, 128, 128, 3) and batch["image"].dtype == np.uint8
        np.testing.assert_array_equal(batch["label"], taxonomy.leaf_to_level(batch["leaf"], 1))
    np.testing.assert_array_equal(np.concatenate([b["weight"] for b in batches]), [1, 1, 1, 1, 1, 0])
    assert batches[-1]["weight"].dtype == np.float32
    np.testing.assert_array_equal(batches[-1]["image"][1], batches[-1]["image"][0])
    # The plan decides the content: rebuilding sample 4 by hand gives the same image.
    sample = imc_pipeline.make_val_plan(index.val, seed=3, n_samples=5)[4]
    patch = stream.PatchSource(index.root, [sample.entry])[0]
    expected = imc_pipeline.imc_sample(
        patch, sample.leaf, sample.crop_y, sample.crop_x, 128, 1, np.random.default_rng(sample.noise_seed)
    )
    np.testing.assert_array_equal(batches[2]["image"][0], expected["image"])
    with pytest.raises(ValueError, match="unknown split"):
        imc_pipeline.make_val_batches(index, seed=3, n_samples=5, batch_size=2, split="dev")


def test_patch_groups_cover_each_photo_and_decode_once(index):
    groups = imc_pipeline.group_patches(index.train, 3, seed=2)
    assert groups == imc_pipeline.group_patches(index.train, 3, seed=2)
    for group in groups:
        assert len(group) == 3 and len({e.path for e in group}) == 1
    for path in {e.path for e in index.train}:
        mine = [e for g in groups for e in g if e.path == path]
        assert set(mine) == {e for e in index.train if e.path == path}
    with pytest.raises(ValueError, match="group_size"):
        imc_pipeline.group_patches(index.train, 0, seed=2)

    def batches(seed):
        dataset = imc_pipeline.make_train_dataset(
            index, seed=seed, batch_size=6, level=4, patches_per_image=3
        )
        return take_batches(iter(dataset), 2)

    grouped = batches(5)
    assert_same_batches(grouped, batches(5))
    for batch in grouped:
        assert batch["image"].shape == (6, 128, 128, 3) and batch["leaf"].shape == (6,)
        np.testing.assert_array_equal(batch["label"], taxonomy.leaf_to_level(batch["leaf"], 4))
    with pytest.raises(ValueError, match="multiple of patches_per_image"):
        imc_pipeline.make_train_dataset(index, seed=0, batch_size=4, patches_per_image=3)
