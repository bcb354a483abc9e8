"""The synthetic-forgery input pipeline (grain) for localisation training, and its fixed val set.

One sample is a pristine patch of the index (optionally a random ``patch_size`` window of
it), forged by one of ``forgeries.FORGERY_TYPES`` drawn with the configured weights, or,
with probability ``pristine_share``, left pristine with an all-zero mask (kind
``forgeries.PRISTINE_ID`` = -1). Splicing takes its donor from another patch of the same
split, another photo whenever the split has more than one. Optional whole-image
post-processing (``forgeries.postprocess``: JPEG, downscale) is applied to every sample,
pristine ones included, so that it never tells forged from pristine.

Training pipeline: ``stream.train_stream`` over the entry indices of the split, with
``ForgeryTransform`` as the random map (see ``stream`` for the order, the shards, the
workers and why the batches do not depend on the worker count). The elements are entry
indices rather than patches so that the transform loads the patch and its donor through
the same ``PatchSource``, and so the same per-worker LRU of decoded photos.

Validation: ``make_val_plan`` fixes, per sample, the patch, kind, donor, window and noise
seed (``n_per_type`` samples of each forgery type, plus pristine ones for a non-zero
``pristine_share``); ``make_val_batches`` renders it, without post-processing.
"""

from __future__ import annotations

import collections
from typing import Any, Mapping, NamedTuple, Sequence

import grain
import numpy as np

from mantra_jax.data import forgeries, stream
from mantra_jax.data.photos import PatchEntry, PatchIndex

FORGERY_TYPES = forgeries.FORGERY_TYPES
PRISTINE_ID = forgeries.PRISTINE_ID
SPLICING_ID = FORGERY_TYPES.index("splicing")


def type_probabilities(type_weights: Sequence[float]) -> np.ndarray:
    """Validated, normalised probabilities of the forgery types (order ``FORGERY_TYPES``).

    Raises:
      ValueError: not one weight per type, a negative or non-finite weight, or all zero.
    """
    try:
        weights = np.asarray(type_weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"type_weights must be {len(FORGERY_TYPES)} numbers (for {FORGERY_TYPES}), "
            f"got {type_weights!r}"
        ) from None
    if weights.shape != (len(FORGERY_TYPES),):
        raise ValueError(
            f"type_weights must have one weight per forgery type {FORGERY_TYPES}, "
            f"got {len(weights.reshape(-1))} values: {type_weights!r}"
        )
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"type_weights must be finite and non-negative, got {type_weights!r}")
    if weights.sum() <= 0:
        raise ValueError(
            f"type_weights are all zero: at least one of {FORGERY_TYPES} needs a positive weight"
        )
    return weights / weights.sum()


class DonorPicker:
    """Draws a splicing donor for entry i: a patch of another photo, chosen uniformly.

    When all entries come from one photo, the donor is another patch of that photo; with a
    single entry, the entry itself (splicing then pastes a displaced region of the patch).
    Works for entries in any order; it holds only integer arrays, so it pickles cheaply.
    """

    def __init__(self, entries: Sequence[PatchEntry]):
        by_photo: dict[str, list[int]] = collections.defaultdict(list)
        for i, entry in enumerate(entries):
            by_photo[PatchEntry(*entry).path].append(i)
        n = len(entries)
        # Entry indices photo by photo; entry i's photo occupies positions
        # [_start[i], _start[i] + _count[i]) of _order.
        self._order = np.empty(n, np.int64)
        self._start = np.empty(n, np.int64)
        self._count = np.empty(n, np.int64)
        position = 0
        for path in sorted(by_photo):
            members = by_photo[path]
            self._order[position : position + len(members)] = members
            self._start[members] = position
            self._count[members] = len(members)
            position += len(members)

    def __len__(self) -> int:
        return len(self._order)

    def pick(self, i: int, rng: np.random.Generator, self_prob: float = 0.0) -> int:
        """A donor for entry i: with probability ``self_prob`` entry i itself (the same patch
        of the same photo: content of matched statistics, so that a splice from it differs
        only by its resampling and processing), else ``self(i, rng)``. Draws nothing extra
        at probability 0."""
        if self_prob > 0 and rng.random() < self_prob:
            return int(i)
        return self(i, rng)

    def __call__(self, i: int, rng: np.random.Generator) -> int:
        n = len(self._order)
        start, count = int(self._start[i]), int(self._count[i])
        if count < n:
            # Uniform over the positions outside entry i's photo: skip its run.
            position = int(rng.integers(n - count))
            return int(self._order[position if position < start else position + count])
        if n == 1:
            return i
        other = int(rng.integers(n - 1))
        return other if other < i else other + 1


def forgery_sample(
    patch: np.ndarray,
    donor: np.ndarray | None,
    kind_id: int,
    crop_y: int,
    crop_x: int,
    patch_size: int,
    rng: np.random.Generator,
    postprocess_kwargs: Mapping[str, Any] | None = None,
    donor_history_prob: float = 0.0,
) -> dict[str, np.ndarray]:
    """Forges the ``patch_size`` window at (crop_y, crop_x) of ``patch`` as ``kind_id``.

    ``kind_id`` is an index in FORGERY_TYPES or PRISTINE_ID (the window, all-zero mask).
    ``donor`` (any size) is needed for splicing only; with probability
    ``donor_history_prob`` it is processed by a random IMC manipulation before pasting. The
    post-processing, when given, is applied to pristine samples too. Returns {"image": uint8 (P, P, 3), "mask": uint8
    (P, P) in {0, 1}, "kind": int32}.
    """
    window = patch[crop_y : crop_y + patch_size, crop_x : crop_x + patch_size]
    if window.shape[:2] != (patch_size, patch_size):
        raise ValueError(
            f"the {patch_size}x{patch_size} window at (y={crop_y}, x={crop_x}) lies outside "
            f"the {patch.shape[0]}x{patch.shape[1]} patch"
        )
    if kind_id == PRISTINE_ID:
        # Not through synthesize: the pipeline decides pristine first, so that a pristine
        # sample never loads a donor (a second photo decode).
        image = window.copy()
        mask = np.zeros((patch_size, patch_size), np.uint8)
        if postprocess_kwargs is not None:
            image = forgeries.postprocess(image, rng, **postprocess_kwargs)
    else:
        image, mask, kind_id = forgeries.synthesize(
            FORGERY_TYPES[kind_id],
            np.ascontiguousarray(window),
            donor,
            rng,
            pristine_share=0.0,
            postprocess_kwargs=None if postprocess_kwargs is None else dict(postprocess_kwargs),
            donor_history_prob=donor_history_prob,
        )
    return {
        "image": np.ascontiguousarray(image, dtype=np.uint8),
        "mask": np.ascontiguousarray(mask, dtype=np.uint8),
        "kind": np.int32(kind_id),
    }


class ForgeryTransform(grain.transforms.RandomMap):
    """grain random map: entry index -> {"image", "mask", "kind"} (numpy/OpenCV only).

    Per element it draws, from grain's generator: pristine or not, the forgery type, the
    window, the donor (splicing only), then the forgery itself.
    """

    def __init__(
        self,
        source: stream.PatchSource,
        *,
        type_probabilities: np.ndarray,
        pristine_share: float,
        postprocess_kwargs: Mapping[str, Any] | None,
        patch_size: int,
        self_donor_prob: float = 0.0,
        donor_history_prob: float = 0.0,
    ):
        self.source = source
        self.donors = DonorPicker(source.entries)
        self.self_donor_prob = float(self_donor_prob)
        self.donor_history_prob = float(donor_history_prob)
        self.type_probabilities = np.asarray(type_probabilities, np.float64)
        self.pristine_share = float(pristine_share)
        self.postprocess_kwargs = None if postprocess_kwargs is None else dict(postprocess_kwargs)
        self.patch_size = int(patch_size)

    def random_map(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        index = int(index)
        if rng.random() < self.pristine_share:
            kind_id = PRISTINE_ID
        else:
            kind_id = int(rng.choice(len(FORGERY_TYPES), p=self.type_probabilities))
        room = self.source.patch_size - self.patch_size + 1
        crop_y, crop_x = (int(v) for v in rng.integers(room, size=2))
        donor = None
        if kind_id == SPLICING_ID:
            donor = self.source[self.donors.pick(index, rng, self.self_donor_prob)]
        return forgery_sample(
            self.source[index],
            donor,
            kind_id,
            crop_y,
            crop_x,
            self.patch_size,
            rng,
            self.postprocess_kwargs,
            self.donor_history_prob,
        )

    def __repr__(self) -> str:
        return (
            f"ForgeryTransform({self.source!r}, types={self.type_probabilities.round(3).tolist()}, "
            f"pristine_share={self.pristine_share}, postprocess={self.postprocess_kwargs}, "
            f"patch_size={self.patch_size}, self_donor_prob={self.self_donor_prob}, "
            f"donor_history_prob={self.donor_history_prob})"
        )


def make_train_dataset(
    index: PatchIndex,
    *,
    seed: int,
    batch_size: int,
    type_weights: Sequence[float] = (1, 1, 1, 1),
    pristine_share: float = 0.0,
    postprocess: Mapping[str, Any] | None = None,
    patch_size: int = 256,
    worker_count: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    prefetch_buffer: int = 2,
    split: str = "train",
    cache_images: int = 16,
    read_threads: int = 1,
    self_donor_prob: float = 0.0,
    donor_history_prob: float = 0.0,
) -> grain.IterDataset:
    """The infinite synthetic-forgery training stream of this process, as a grain IterDataset.

    Yields dicts {"image": uint8 (B, P, P, 3), "mask": uint8 (B, P, P) in {0, 1}, "kind":
    int32 (B,)} with B = ``batch_size`` per process, P = ``patch_size`` and kind the index
    in FORGERY_TYPES (-1 for pristine samples, whose mask is all zero).

    Args:
      index: the pristine patch index; ``split`` selects its entries (and the donors).
      seed: the pipeline seed (order, types, windows, donors, forgeries).
      type_weights: relative weights of FORGERY_TYPES (splicing, copy_move, removal,
        enhancement); non-negative, not all zero.
      pristine_share: probability that a sample is left pristine, in [0, 1].
      postprocess: None (off) or keyword arguments of ``forgeries.postprocess`` ({} for its
        defaults), applied to every whole sample image.
      patch_size: side of the samples; below the index's patch size, each sample is a
        random window of its patch.
      worker_count: grain worker processes (0 = in this process).
      shard_index, shard_count: this process's slice (``jax.process_index()`` and
        ``jax.process_count()`` in the trainer).
      prefetch_buffer: batches buffered per worker (and in the reading thread).
      cache_images: decoded photos kept per process.
      read_threads: threads reading elements inside each process (0 reads synchronously).
      self_donor_prob: probability that a splice takes its donor from its own patch
        (``DonorPicker.pick``) rather than from another photo.
      donor_history_prob: probability that a splice's donor is processed by a random IMC
        manipulation before pasting (another processing history).
    """
    _check_probability(self_donor_prob, "self_donor_prob")
    _check_probability(donor_history_prob, "donor_history_prob")
    probabilities = type_probabilities(type_weights)
    pristine_share = _check_pristine_share(pristine_share, upper_inclusive=True)
    _check_patch_size(patch_size, index.patch_size)
    postprocess = _check_postprocess(postprocess, patch_size)
    source = stream.PatchSource(
        index.root, index.entries(split), index.patch_size, cache_images=cache_images
    )
    transform = ForgeryTransform(
        source,
        type_probabilities=probabilities,
        pristine_share=pristine_share,
        postprocess_kwargs=postprocess,
        patch_size=patch_size,
        self_donor_prob=self_donor_prob,
        donor_history_prob=donor_history_prob,
    )
    return stream.train_stream(
        grain.MapDataset.range(len(source)),
        transform,
        seed=seed,
        batch_size=batch_size,
        shard_index=shard_index,
        shard_count=shard_count,
        worker_count=worker_count,
        read_threads=read_threads,
        prefetch_buffer=prefetch_buffer,
    )


class ForgeryValSample(NamedTuple):
    """One fixed validation sample: patch, kind, donor (splicing), window, noise seed."""

    entry: PatchEntry
    kind: int
    donor: PatchEntry | None
    crop_y: int
    crop_x: int
    noise_seed: int


def val_pristine_count(n_per_type: int, pristine_share: float) -> int:
    """Pristine samples added to 4 * n_per_type forged ones so they make ``pristine_share``."""
    pristine_share = _check_pristine_share(pristine_share, upper_inclusive=False)
    forged = len(FORGERY_TYPES) * n_per_type
    return int(round(forged * pristine_share / (1.0 - pristine_share)))


def make_val_plan(
    entries: Sequence[PatchEntry],
    *,
    seed: int,
    n_per_type: int,
    pristine_share: float = 0.0,
    source_patch_size: int = 256,
    patch_size: int = 256,
    self_donor_prob: float = 0.0,
) -> list[ForgeryValSample]:
    """The deterministic list of samples of the validation set.

    Exactly ``n_per_type`` samples of each forgery type, plus ``val_pristine_count``
    pristine ones, in a seeded order (so any prefix of the set mixes the types); patches
    are balanced over ``entries``; splicing donors follow the training rule (``DonorPicker``).
    """
    if not entries:
        raise ValueError("the validation split has no patch (is the photo folder too small?)")
    if n_per_type < 1:
        raise ValueError(f"n_per_type must be >= 1, got {n_per_type}")
    _check_patch_size(patch_size, source_patch_size)
    entries = [PatchEntry(*e) for e in entries]
    n_pristine = val_pristine_count(n_per_type, pristine_share)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF06]))
    kinds = np.concatenate(
        [np.repeat(np.arange(len(FORGERY_TYPES)), n_per_type), np.full(n_pristine, PRISTINE_ID)]
    )
    kinds = rng.permutation(kinds)
    patches = stream.balanced(rng, len(entries), len(kinds))
    crops = rng.integers(source_patch_size - patch_size + 1, size=(len(kinds), 2))
    noise_seeds = rng.integers(2**63, size=len(kinds))
    donors = DonorPicker(entries)
    plan = []
    for kind, p, (cy, cx), noise_seed in zip(kinds, patches, crops, noise_seeds):
        donor = entries[donors.pick(int(p), rng, self_donor_prob)] if kind == SPLICING_ID else None
        plan.append(
            ForgeryValSample(entries[p], int(kind), donor, int(cy), int(cx), int(noise_seed))
        )
    return plan


def make_val_batches(
    index: PatchIndex,
    *,
    seed: int,
    n_per_type: int,
    batch_size: int,
    split: str = "val",
    patch_size: int = 256,
    pristine_share: float = 0.0,
    postprocess: Mapping[str, Any] | None = None,
    self_donor_prob: float = 0.0,
    donor_history_prob: float = 0.0,
) -> list[dict[str, np.ndarray]]:
    """The fixed validation set as a list of batches, identical at every call.

    Every batch has the training keys plus "weight" (``stream.padded_batches``: 0 marks
    the padding of the last batch). "kind" tells the forgery type of each sample
    (per-type metrics). The synthesis options are the training stream's (post-processing,
    when given, from each sample's own seed). Build it once and keep it: it costs one
    forgery per sample.
    """
    postprocess = _check_postprocess(postprocess, patch_size)
    plan = make_val_plan(
        index.entries(split),
        seed=seed,
        n_per_type=n_per_type,
        pristine_share=pristine_share,
        source_patch_size=index.patch_size,
        patch_size=patch_size,
        self_donor_prob=self_donor_prob,
    )
    source = stream.PatchSource(index.root, index.entries(split), index.patch_size)

    def render(s: ForgeryValSample) -> dict[str, np.ndarray]:
        donor = None if s.donor is None else source.patch(s.donor)
        return forgery_sample(
            source.patch(s.entry), donor, s.kind, s.crop_y, s.crop_x, patch_size,
            np.random.default_rng(s.noise_seed), postprocess, donor_history_prob,
        )

    return stream.padded_batches(plan, render, batch_size)


def _check_pristine_share(pristine_share: float, *, upper_inclusive: bool) -> float:
    share = float(pristine_share)
    if not (0.0 <= share <= 1.0 if upper_inclusive else 0.0 <= share < 1.0):
        bound = "[0, 1]" if upper_inclusive else "[0, 1) for a validation set"
        raise ValueError(f"pristine_share must be in {bound}, got {pristine_share!r}")
    return share


def _check_probability(value: float, name: str) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def _check_patch_size(patch_size: int, source_patch_size: int) -> None:
    if not forgeries.MIN_PATCH_SIDE <= patch_size <= source_patch_size:
        raise ValueError(
            f"patch_size must be in {forgeries.MIN_PATCH_SIDE}..{source_patch_size} (the index's "
            f"patch size), got {patch_size}"
        )


def _check_postprocess(
    postprocess: Mapping[str, Any] | None, patch_size: int
) -> dict[str, Any] | None:
    """Fails here, with a clear message, on arguments ``forgeries.postprocess`` rejects.

    Otherwise the error would surface only inside a worker, at the first sample.
    """
    if postprocess is None:
        return None
    if not isinstance(postprocess, Mapping):
        raise ValueError(
            f"postprocess must be None or a dict of forgeries.postprocess arguments, "
            f"got {type(postprocess).__name__}"
        )
    kwargs = dict(postprocess)
    probe = np.zeros((patch_size, patch_size, 3), np.uint8)
    try:
        forgeries.postprocess(probe, np.random.default_rng(0), **kwargs)
    except TypeError as e:
        raise ValueError(f"postprocess: invalid arguments {kwargs!r} ({e})") from None
    return kwargs

