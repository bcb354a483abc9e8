"""What both grain training pipelines share: the patch source, the order, the shard, batching,
prefetch, and the padding of the fixed validation sets.

A training stream (grain 0.2.x) is::

  MapDataset over a PatchSource      patches (or entry indices) read on demand
    .seed(seed).shuffle().repeat()   one global order, reshuffled every epoch
    [shard_index::shard_count]       this process's slice (multi-host: each process
                                     reads only its shard; the trainer assembles the
                                     global array from the per-process batches)
    .random_map(transform)           the pipeline's own transform: numpy + OpenCV only
    .batch(batch_size)               batch_size is per process
    .to_iter_dataset()
    .mp_prefetch(worker_count)       0 = in process, one OpenCV thread per worker

Randomness comes only from the generator grain hands ``random_map`` for each element,
derived from the seed folded with the shard index (``shard_seed``: processes draw
independent samples) and the element's position; batching happens before the worker
split, so the batches are identical for any worker count. ``iterator.get_state()`` is
specific to the worker count, so resume with the same ``worker_count``.
"""

from __future__ import annotations

import collections
import os
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import grain
import numpy as np

from mantra_jax.data import images
from mantra_jax.data.photos import PatchEntry


class PatchSource:
    """grain random-access source of pristine patches over (image path, y, x) entries.

    ``source[i]`` is the uint8 ``patch_size`` x ``patch_size`` x 3 RGB patch of entry i.
    Decoded photos are kept in a small LRU cache, one per process (the cache is not
    pickled, so each grain worker starts with its own empty one).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        entries: Sequence[PatchEntry],
        patch_size: int = 256,
        *,
        cache_images: int = 16,
        max_pixels: int = images.DEFAULT_MAX_PIXELS,
    ):
        if not entries:
            raise ValueError(f"{root}: PatchSource needs at least one patch entry, got none")
        self.root = Path(root)
        self.entries = tuple(PatchEntry(*e) for e in entries)
        self.patch_size = int(patch_size)
        self.cache_images = int(cache_images)
        self.max_pixels = int(max_pixels)
        self._init_cache()

    def _init_cache(self) -> None:
        self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_cache"], state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_cache()

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.patch(self.entries[index])

    def patch(self, entry: PatchEntry) -> np.ndarray:
        """The patch of any entry under ``root`` (the LRU serves repeated photos)."""
        image = self._image(entry.path)
        p = self.patch_size
        patch = image[entry.y : entry.y + p, entry.x : entry.x + p]
        if patch.shape[:2] != (p, p):
            raise images.ImageReadError(
                f"{self.root / entry.path}: patch at (y={entry.y}, x={entry.x}) of size {p} "
                f"lies outside the {image.shape[0]}x{image.shape[1]} image (changed since indexing?)"
            )
        return patch.copy()

    def __repr__(self) -> str:
        return f"PatchSource(root={str(self.root)!r}, {len(self.entries)} patches of {self.patch_size})"

    def _image(self, relative_path: str) -> np.ndarray:
        with self._lock:
            image = self._cache.get(relative_path)
            if image is not None:
                self._cache.move_to_end(relative_path)
                return image
        image = images.read_rgb(self.root / relative_path, max_pixels=self.max_pixels)
        with self._lock:
            self._cache[relative_path] = image
            while len(self._cache) > self.cache_images:
                self._cache.popitem(last=False)
        return image


def ordered(
    dataset: grain.MapDataset, *, seed: int, shard_index: int = 0, shard_count: int = 1
) -> grain.MapDataset:
    """seed -> shuffle -> repeat (infinite) -> this process's slice, for any MapDataset.

    The order depends on the length of ``dataset`` and the seed only, so it can be
    inspected over indices (``MapDataset.source(list(range(n)))``).
    """
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in 0..{shard_count - 1}, got {shard_index}")
    return dataset.seed(seed).shuffle().repeat()[shard_index::shard_count]


def shard_seed(seed: int, shard_index: int) -> int:
    """The random_map seed of a shard: grain wants one in [0, 2**32); the shard is folded in
    so that processes draw independent samples."""
    return int(np.random.SeedSequence([seed, shard_index]).generate_state(1)[0])


def train_stream(
    dataset: grain.MapDataset,
    transform: grain.transforms.RandomMap,
    *,
    seed: int,
    batch_size: int,
    shard_index: int,
    shard_count: int,
    worker_count: int,
    read_threads: int,
    prefetch_buffer: int,
    batch_fn: Callable[[Sequence[Any]], Any] | None = None,
) -> grain.IterDataset:
    """The infinite stream of this process (see the module docstring): ``dataset`` ordered
    and sharded, mapped by ``transform``, cut into batches of ``batch_size`` elements
    (stacked, or joined by ``batch_fn``), read by ``worker_count`` processes."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if worker_count < 0:
        raise ValueError(f"worker_count must be >= 0, got {worker_count}")
    dataset = ordered(dataset, seed=seed, shard_index=shard_index, shard_count=shard_count)
    dataset = dataset.random_map(transform, seed=shard_seed(seed, shard_index))
    dataset = dataset.batch(batch_size, drop_remainder=True, batch_fn=batch_fn)
    iter_dataset = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_buffer)
    )
    if worker_count > 0:
        _ensure_absl_flags_parsed()
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=worker_count, per_worker_buffer_size=prefetch_buffer
            ),
            worker_init_fn=init_worker,
        )
    return iter_dataset


def init_worker(worker_index: int, worker_count: int) -> None:
    """grain worker initialiser: one OpenCV thread per worker (the workers are the parallelism)."""
    del worker_index, worker_count
    cv2.setNumThreads(1)


def balanced(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """``count`` draws from range(n) running through successive random permutations, so every
    value appears floor or ceil(count / n) times (validation plans)."""
    rounds = -(-count // n)
    return np.concatenate([rng.permutation(n) for _ in range(rounds)])[:count]


def padded_batches(
    plan: Sequence[Any], render: Callable[[Any], dict[str, np.ndarray]], batch_size: int
) -> list[dict[str, np.ndarray]]:
    """A fixed validation set: ``render`` of each planned sample, stacked into batches.

    Every batch gets "weight", float32 (B,): 1 for a real sample, 0 for padding. The last
    batch is padded to ``batch_size`` by repeating its last sample (weight 0), so every
    batch has the same shape (no recompilation) and no sample is dropped.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    samples = [dict(render(s), weight=np.float32(1.0)) for s in plan]
    batches = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        chunk = chunk + [dict(chunk[-1], weight=np.float32(0.0))] * (batch_size - len(chunk))
        batches.append({key: np.stack([s[key] for s in chunk]) for key in chunk[0]})
    return batches


def _ensure_absl_flags_parsed() -> None:
    # grain's mp_prefetch reads its absl flags; outside absl.app.run (pytest, plain
    # scripts) nobody parsed them. Marking them parsed keeps every default.
    from absl import flags  # pylint: disable=g-import-not-at-top

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
