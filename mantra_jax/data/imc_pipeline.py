"""The IMC pretraining input pipeline (grain) and its fixed validation set.

One IMC sample is a random pristine 256 x 256 patch, a uniformly random leaf of the
manipulation bank applied to the whole patch, then a random ``crop`` x ``crop`` window
(cropping after the manipulation keeps filter borders out of the window): a uint8 image
and its label at any level of the taxonomy.

Training pipeline: ``stream.train_stream`` over a ``PatchSource`` of the split's patches,
with ``ImcSampleTransform`` as the random map (see ``stream`` for the order, the shards,
the workers and why the batches do not depend on the worker count).

Large photos: with one sample per element, every sample decodes its whole photo (the
per-worker LRU rarely hits on a shuffled corpus of thousands of photos), and decoding a
camera-sized JPEG costs over ten times a manipulation. ``patches_per_image=k`` makes each
element a group of k patches of one photo (one decode, k samples); batches are then
concatenated groups. The default k = 1 is the plain per-patch sampling of the paper.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import NamedTuple, Sequence

import grain
import numpy as np

from mantra_jax.data import stream
from mantra_jax.data.photos import PatchEntry, PatchIndex
from mantra_jax.imc import manipulations, taxonomy


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

    def __init__(self, patch_source: stream.PatchSource, groups: Sequence[Sequence[PatchEntry]]):
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
    if not 0 < crop <= index.patch_size:
        raise ValueError(f"crop must be in 1..{index.patch_size}, got {crop}")
    if patches_per_image < 1 or batch_size % patches_per_image:
        raise ValueError(
            f"batch_size ({batch_size}) must be a multiple of patches_per_image "
            f"({patches_per_image} >= 1)"
        )
    source = stream.PatchSource(
        index.root, index.entries(split), index.patch_size, cache_images=cache_images
    )
    batch_fn = None
    if patches_per_image > 1:
        source = ImcGroupSource(source, group_patches(source.entries, patches_per_image, seed=seed))
        transform = ImcGroupTransform(level=level, crop=crop)
        batch_fn = _concatenate_samples
    else:
        transform = ImcSampleTransform(level=level, crop=crop)
    return stream.train_stream(
        grain.MapDataset.source(source),
        transform,
        seed=seed,
        batch_size=batch_size // patches_per_image,
        batch_fn=batch_fn,
        shard_index=shard_index,
        shard_count=shard_count,
        worker_count=worker_count,
        read_threads=read_threads,
        prefetch_buffer=prefetch_buffer,
    )


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
    leaves = stream.balanced(rng, manipulations.NUM_LEAVES, n_samples)
    patches = stream.balanced(rng, len(entries), n_samples)
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

    Every batch has the training keys plus "weight" (``stream.padded_batches``: 0 marks
    the padding of the last batch); weight the metrics with it. Build it once and keep
    it: it costs one manipulation per sample.
    """
    level = taxonomy.level_index(level)
    plan = make_val_plan(
        index.entries(split), seed=seed, n_samples=n_samples, patch_size=index.patch_size, crop=crop
    )
    source = stream.PatchSource(index.root, [s.entry for s in plan], index.patch_size)

    def render(s: ValSample) -> dict[str, np.ndarray]:
        return imc_sample(
            source.patch(s.entry), s.leaf, s.crop_y, s.crop_x, crop, level,
            np.random.default_rng(s.noise_seed),
        )

    return stream.padded_batches(plan, render, batch_size)
