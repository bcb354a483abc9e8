"""Tests for mantra_jax.data.stream: the patch source, the order and shards, the val padding."""

import pickle

import grain
import numpy as np
import pytest

from mantra_jax.data import images, photos, stream
from tests.helpers import write_photo_folder


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """Synthetic 256 x 512 textured photos: 4 in the train split (8 patches)."""
    root = write_photo_folder(tmp_path_factory.mktemp("stream_photos"), {"train": 4}, width=512, subfolders=3)
    return photos.build_patch_index(root, use_cache=False)


def test_source_loads_the_indexed_patch_and_pickles_without_cache(index):
    source = stream.PatchSource(index.root, index.train, index.patch_size, cache_images=2)
    assert len(source) == len(index.train)
    for i in (0, len(source) - 1, 1):
        entry = index.train[i]
        full = images.read_rgb(index.image_path(entry))
        np.testing.assert_array_equal(source[i], full[entry.y : entry.y + 256, entry.x : entry.x + 256])
    assert len(source._cache) <= 2
    clone = pickle.loads(pickle.dumps(source))
    assert len(clone._cache) == 0
    np.testing.assert_array_equal(clone[3], source[3])
    with pytest.raises(ValueError, match="at least one patch"):
        stream.PatchSource(index.root, [], 256)


def test_shards_partition_the_global_order():
    n = 13
    whole = grain.MapDataset.source(list(range(n)))
    unsharded = stream.ordered(whole, seed=4)
    first_epoch = [unsharded[i] for i in range(n)]
    assert sorted(first_epoch) == list(range(n)) and first_epoch != list(range(n))
    sequence = [unsharded[i] for i in range(60)]
    for shard_index in range(3):
        shard = stream.ordered(whole, seed=4, shard_index=shard_index, shard_count=3)
        assert [shard[i] for i in range(20)] == sequence[shard_index::3]
    with pytest.raises(ValueError, match="shard_index"):
        stream.ordered(whole, seed=4, shard_index=3, shard_count=3)


def test_balanced_runs_through_permutations():
    draws = stream.balanced(np.random.default_rng(0), 4, 10)
    assert sorted(draws[:4]) == sorted(draws[4:8]) == [0, 1, 2, 3]
    assert sorted(np.bincount(draws)) == [2, 2, 3, 3]


def test_padded_batches_repeat_the_last_sample_with_weight_zero():
    rendered = []

    def render(i):
        rendered.append(i)
        return {"value": np.int32(i), "image": np.full((2, 2), i, np.uint8)}

    batches = stream.padded_batches(range(5), render, 2)
    assert rendered == [0, 1, 2, 3, 4] and len(batches) == 3
    assert list(batches[0]) == ["value", "image", "weight"]
    np.testing.assert_array_equal(np.concatenate([b["value"] for b in batches]), [0, 1, 2, 3, 4, 4])
    np.testing.assert_array_equal(np.concatenate([b["weight"] for b in batches]), [1, 1, 1, 1, 1, 0])
    assert batches[-1]["weight"].dtype == np.float32 and batches[-1]["image"].shape == (2, 2, 2)
    with pytest.raises(ValueError, match="batch_size"):
        stream.padded_batches(range(5), render, 0)
    assert rendered == [0, 1, 2, 3, 4]  # refused before rendering anything


def test_stream_arguments_are_checked():
    dataset = grain.MapDataset.range(4)
    kwargs = dict(seed=0, batch_size=2, shard_index=0, shard_count=1, worker_count=0, read_threads=1,
                  prefetch_buffer=1)
    never_called = grain.transforms.RandomMap  # the checks come first
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        stream.train_stream(dataset, never_called, **{**kwargs, "batch_size": 0})
    with pytest.raises(ValueError, match="worker_count must be >= 0, got -1"):
        stream.train_stream(dataset, never_called, **{**kwargs, "worker_count": -1})
