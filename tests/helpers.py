"""Shared test helpers: synthetic photo folders, random networks drawn in numpy, batch comparison."""
import cv2
import jax
import numpy as np

from mantra_jax.data import photos
from mantra_jax.nn import model


def write_photo_folder(root, wanted, *, height=256, width=256, subfolders=0, seed=0):
    """Writes PNG noise photos into `root` until each split of `wanted` ({"train": 2, ...}) has its
    count; with `subfolders` > 0 the photos are spread over cam0/, cam1/, ... Returns `root`."""
    rng = np.random.default_rng(seed)
    wanted, i = dict(wanted), 0
    while any(wanted.values()):
        name = f"cam{i % subfolders}/p{i:03d}.png" if subfolders else f"p{i:03d}.png"
        i += 1
        split = photos.split_of(name)
        if wanted.get(split, 0) == 0:
            continue
        wanted[split] -= 1
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        ok, encoded = cv2.imencode(".png", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        assert ok
        (root / name).write_bytes(encoded.tobytes())
    return root


def random_variables(cfg, seed):
    """A random network of cfg's shapes, drawn in numpy (model.init costs seconds of compilation)."""
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), cfg))

    def draw(leaf):  # He-scaled kernels and small biases keep the features input-dependent
        fan_in = int(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 1e4
        return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return jax.tree.map(draw, abstract)


def take_batches(iterator, n):
    """The next n batches, copied out of grain's shared-memory arrays so nothing outlives the iterator."""
    return [{k: np.array(v) for k, v in next(iterator).items()} for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
