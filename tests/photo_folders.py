"""Synthetic photo folders for tests: random-noise photos whose names hash to the wanted splits."""
import cv2
import numpy as np

from mantra_jax.data import photos


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
