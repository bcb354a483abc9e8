"""The IMC pretraining input pipeline (grain) and its fixed validation set.

One IMC sample is a random pristine 256 x 256 patch, a uniformly random leaf of the
manipulation bank applied to the whole patch, then a random ``crop`` x ``crop`` window
(cropping after the manipulation keeps filter borders out of the window): a uint8 image
and its label at any level of the taxonomy.

Training pipeline (grain 0.2.x)::

  MapDataset.source(ImcSource)       patches loaded on demand, small per-worker LRU
    .seed(seed).shuffle().repeat()   one global order, reshuffled every epoch
    [shard_index::shard_count]       this process's slice (multi-host: each process
                                     reads only its shard; the trainer assembles the
                                     global array from the per-process batches)
    .random_map(ImcSampleTransform)  numpy + OpenCV only, never JAX
    .batch(batch_size)               batch_size is per process
    .to_iter_dataset()
    .mp_prefetch(worker_count)       0 = in process

Randomness comes only from the generator grain hands ``random_map`` for each element,
derived from the seed, the shard and the element's position; batching happens before
the worker split, so the batches are identical for any worker count. The random_map
seed is folded with the shard index so that processes draw independent leaves and crops.

Large photos: with one sample per element, every sample decodes its whole photo (the
per-worker LRU rarely hits on a shuffled corpus of thousands of photos), and decoding a
camera-sized JPEG costs over ten times a manipulation. ``patches_per_image=k`` makes each
element a group of k patches of one photo (one decode, k samples); batches are then
concatenated groups. The default k = 1 is the plain per-patch sampling of the paper.

Checkpointing: ``iterator.get_state()`` is a small JSON-able dict (see
``iterator_state_to_json``); it is specific to the worker count, so resume with the
same ``worker_count``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import threading
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import cv2
import grain
import numpy as np

from mantra_jax.data import images
from mantra_jax.data.photos import PatchEntry, PatchIndex
from mantra_jax.imc import manipulations, taxonomy


class ImcSource:
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
            raise ValueError(f"{root}: ImcSource needs at least one patch entry, got none")
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
        return f"ImcSource(root={str(self.root)!r}, {len(self.entries)} patches of {self.patch_size})"

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


def imc_sample(
    patch: np.ndarray,
    leaf: int,
    crop_y: int,
    crop_x: int,
    crop: int,
    level: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Applies ``leaf`` to the whole patch (noise from ``rng``), then crops the window."""
    manipulated = manipulations.apply(leaf, patch, rng)
    window = manipulated[crop_y : crop_y + crop, crop_x : crop_x + crop]
    return {
        "image": np.ascontiguousarray(window, dtype=np.uint8),
        "label": np.int32(taxonomy.leaf_to_level(leaf, level)),
        "leaf": np.int32(leaf),
    }


@dataclasses.dataclass(frozen=True)
class ImcSampleTransform(grain.transforms.RandomMap):
    """grain random map: pristine patch -> {"image", "label", "leaf"} (numpy/OpenCV only)."""

    level: int = taxonomy.LEAF_LEVEL
    crop: int = 128

    def random_map(self, patch: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        leaf = manipulations.sample_leaf(rng)
        crop_y = int(rng.integers(patch.shape[0] - self.crop + 1))
        crop_x = int(rng.integers(patch.shape[1] - self.crop + 1))
        return imc_sample(patch, leaf, crop_y, crop_x, self.crop, self.level, rng)


class ImcGroupSource:
    """grain random-access source of patch groups: element g stacks the patches of group g.

    Every patch of a group comes from one photo, so the photo is decoded once per group
    instead of once per patch (see ``make_train_dataset(patches_per_image=...)``).
    """

    def __init__(self, patch_source: ImcSource, groups: Sequence[Sequence[PatchEntry]]):
        if not groups:
            raise ValueError(f"{patch_source.root}: ImcGroupSource needs at least one group")
        self.patch_source = patch_source
        self.groups = tuple(tuple(PatchEntry(*e) for e in group) for group in groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.stack([self.patch_source.patch(entry) for entry in self.groups[index]])

    def __repr__(self) -> str:
        return f"ImcGroupSource({self.patch_source!r}, {len(self.groups)} groups)"


@dataclasses.dataclass(frozen=True)
class ImcGroupTransform(grain.transforms.RandomMap):
    """grain random map: (k, P, P, 3) patches -> k IMC samples stacked on a leading axis."""

    level: int = taxonomy.LEAF_LEVEL
    crop: int = 128

    def random_map(self, patches: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        one = ImcSampleTransform(level=self.level, crop=self.crop)
        samples = [one.random_map(patch, rng) for patch in patches]
        return {key: np.stack([s[key] for s in samples]) for key in samples[0]}


def group_patches(
    entries: Sequence[PatchEntry], group_size: int, *, seed: int
) -> list[tuple[PatchEntry, ...]]:
    """Cuts each photo's patches into groups of exactly ``group_size``, in a seeded order.

    A photo with n patches gives ceil(n / group_size) groups; its (permuted) patch list
    wraps around to fill the last group, so fewer than ``group_size`` patches of a photo
    appear twice per epoch. Photos with fewer patches than ``group_size`` are therefore
    over-represented: use groups on corpora of large photos only.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    by_photo: dict[str, list[PatchEntry]] = collections.defaultdict(list)
    for entry in entries:
        entry = PatchEntry(*entry)
        by_photo[entry.path].append(entry)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6E0]))
    groups = []
    for path in sorted(by_photo):
        members = by_photo[path]
        n_groups = -(-len(members) // group_size)
        order = np.resize(rng.permutation(len(members)), n_groups * group_size)
        for g in range(n_groups):
            groups.append(tuple(members[j] for j in order[g * group_size : (g + 1) * group_size]))
    return groups


def _concatenate_samples(groups: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([g[key] for g in groups]) for key in groups[0]}


def init_worker(worker_index: int, worker_count: int) -> None:
    """grain worker initialiser: one OpenCV thread per worker (the workers are the parallelism)."""
    del worker_index, worker_count
    cv2.setNumThreads(1)


def ordered_patches(
    dataset: grain.MapDataset, *, seed: int, shard_index: int = 0, shard_count: int = 1
) -> grain.MapDataset:
    """seed -> shuffle -> repeat (infinite) -> this process's slice, for any MapDataset.

    The order depends on the length of ``dataset`` and the seed only, so it can be
    inspected over indices (``MapDataset.source(list(range(n)))``).
    """
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in 0..{shard_count - 1}, got {shard_index}")
    return dataset.seed(seed).shuffle().repeat()[shard_index::shard_count]


def make_train_dataset(
    index: PatchIndex,
    *,
    seed: int,
    batch_size: int,
    level: int = taxonomy.LEAF_LEVEL,
    crop: int = 128,
    worker_count: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    prefetch_buffer: int = 2,
    read_threads: int = 1,
    split: str = "train",
    cache_images: int = 16,
    patches_per_image: int = 1,
) -> grain.IterDataset:
    """The infinite IMC training stream of this process, as a grain IterDataset.

    Yields dicts {"image": uint8 (B, crop, crop, 3), "label": int32 (B,) at ``level``,
    "leaf": int32 (B,)} with B = ``batch_size`` per process.

    Args:
      index: the pristine patch index; ``split`` selects its entries.
      seed: the pipeline seed (order, leaves, crops, manipulation noise).
      worker_count: grain worker processes (0 = in this process).
      shard_index, shard_count: this process's slice (``jax.process_index()`` and
        ``jax.process_count()`` in the trainer).
      prefetch_buffer: batches buffered per worker (and in the reading thread).
      read_threads: threads reading elements inside each process (OpenCV releases the
        GIL; 0 reads synchronously).
      cache_images: decoded photos kept per process.
      patches_per_image: 1 (default) samples patches independently, one photo decode
        per sample. k > 1 draws k patches of one photo per decode (``group_patches``):
        a batch then holds batch_size / k photos, each with k different patches, leaves
        and crops. Decoding a camera-sized JPEG costs far more than manipulating a
        patch, so k = 8..16 multiplies the loader's rate on large photos (see
        benchmarks/loader.py); batch_size must be a multiple of k.
    """
    level = taxonomy.level_index(level)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 < crop <= index.patch_size:
        raise ValueError(f"crop must be in 1..{index.patch_size}, got {crop}")
    if worker_count < 0:
        raise ValueError(f"worker_count must be >= 0, got {worker_count}")
    if patches_per_image < 1 or batch_size % patches_per_image:
        raise ValueError(
            f"batch_size ({batch_size}) must be a multiple of patches_per_image "
            f"({patches_per_image} >= 1)"
        )
    source = ImcSource(
        index.root, index.entries(split), index.patch_size, cache_images=cache_images
    )
    if patches_per_image > 1:
        groups = group_patches(source.entries, patches_per_image, seed=seed)
        source = ImcGroupSource(source, groups)
        transform = ImcGroupTransform(level=level, crop=crop)
    else:
        transform = ImcSampleTransform(level=level, crop=crop)
    dataset = ordered_patches(
        grain.MapDataset.source(source),
        seed=seed,
        shard_index=shard_index,
        shard_count=shard_count,
    )
    dataset = dataset.random_map(transform, seed=_shard_seed(seed, shard_index))
    if patches_per_image > 1:
        dataset = dataset.batch(
            batch_size // patches_per_image, drop_remainder=True, batch_fn=_concatenate_samples
        )
    else:
        dataset = dataset.batch(batch_size, drop_remainder=True)
    return prefetched(
        dataset, worker_count=worker_count, read_threads=read_threads, prefetch_buffer=prefetch_buffer
    )


def prefetched(
    dataset: grain.MapDataset, *, worker_count: int, read_threads: int, prefetch_buffer: int
) -> grain.IterDataset:
    """The batched MapDataset as an IterDataset, read by ``worker_count`` processes (0: in
    process) that use numpy and OpenCV only, one OpenCV thread each (``init_worker``)."""
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


class ValSample(NamedTuple):
    """One fixed validation sample: which patch, which leaf, where to crop, noise seed."""

    entry: PatchEntry
    leaf: int
    crop_y: int
    crop_x: int
    noise_seed: int


def make_val_plan(
    entries: Sequence[PatchEntry], *, seed: int, n_samples: int, patch_size: int = 256, crop: int = 128
) -> list[ValSample]:
    """The deterministic list of (patch, leaf, crop, noise seed) of a validation set.

    Leaves are balanced: the list runs through successive random permutations of all
    leaves (n_samples = k * NUM_LEAVES gives every leaf exactly k times); patches are
    balanced the same way over ``entries``.
    """
    if not entries:
        raise ValueError("the validation split has no patch (is the photo folder too small?)")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A1]))
    leaves = _balanced(rng, manipulations.NUM_LEAVES, n_samples)
    patches = _balanced(rng, len(entries), n_samples)
    crops = rng.integers(patch_size - crop + 1, size=(n_samples, 2))
    noise_seeds = rng.integers(2**63, size=n_samples)
    return [
        ValSample(PatchEntry(*entries[p]), int(leaf), int(cy), int(cx), int(ns))
        for p, leaf, (cy, cx), ns in zip(patches, leaves, crops, noise_seeds)
    ]


def make_val_batches(
    index: PatchIndex,
    *,
    seed: int,
    n_samples: int,
    batch_size: int,
    level: int = taxonomy.LEAF_LEVEL,
    crop: int = 128,
    split: str = "val",
) -> list[dict[str, np.ndarray]]:
    """The fixed validation set as a list of batches, identical at every call.

    Every batch has the training keys plus "weight", float32 (B,): 1 for a real sample,
    0 for padding. The last batch is padded to ``batch_size`` by repeating its last
    sample (weight 0), so every batch has the same shape (no recompilation) and no
    sample is dropped; weight the metrics with it. Build it once and keep it: it costs
    one manipulation per sample.
    """
    level = taxonomy.level_index(level)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    plan = make_val_plan(
        index.entries(split), seed=seed, n_samples=n_samples, patch_size=index.patch_size, crop=crop
    )
    source = ImcSource(index.root, [s.entry for s in plan], index.patch_size)
    samples = []
    for i, s in enumerate(plan):
        sample = imc_sample(
            source[i], s.leaf, s.crop_y, s.crop_x, crop, level, np.random.default_rng(s.noise_seed)
        )
        sample["weight"] = np.float32(1.0)
        samples.append(sample)
    batches = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        padding = batch_size - len(chunk)
        chunk = chunk + [dict(chunk[-1], weight=np.float32(0.0))] * padding
        batches.append({key: np.stack([s[key] for s in chunk]) for key in chunk[0]})
    return batches


def iterator_state_to_json(iterator: grain.DatasetIterator) -> str:
    """The iterator's checkpointable state as a JSON string."""
    return json.dumps(iterator.get_state())


def restore_iterator_state(iterator: grain.DatasetIterator, state_json: str) -> None:
    """Restores a state from ``iterator_state_to_json`` (same pipeline, same worker count)."""
    iterator.set_state(json.loads(state_json))


def _balanced(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    rounds = -(-count // n)
    return np.concatenate([rng.permutation(n) for _ in range(rounds)])[:count]


def _shard_seed(seed: int, shard_index: int) -> int:
    # grain wants a seed in [0, 2**32); fold the shard in so processes differ.
    return int(np.random.SeedSequence([seed, shard_index]).generate_state(1)[0])


def _ensure_absl_flags_parsed() -> None:
    # grain's mp_prefetch reads its absl flags; outside absl.app.run (pytest, plain
    # scripts) nobody parsed them. Marking them parsed keeps every default.
    from absl import flags  # pylint: disable=g-import-not-at-top

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
