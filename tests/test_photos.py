"""Tests for mantra_jax.data.photos (split, patch index, cache) and mantra_jax.data.bundled."""

import os
import warnings

import cv2
import numpy as np
import pytest

from mantra_jax.data import bundled, images, photos

PATCH = 64  # small patches keep the synthetic photos tiny; the rules do not depend on it


def _texture(rng, height, width, amplitude=255):
    return rng.integers(0, amplitude + 1, size=(height, width, 3), dtype=np.uint8)


def _write(path, array_bgr):
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix, array_bgr)
    assert ok
    path.write_bytes(encoded.tobytes())


def _reference_origins(image_rgb, patch, min_std):
    """Straightforward loop version of the centred-grid / luma-std rule."""
    height, width = image_rgb.shape[:2]
    rows, cols = height // patch, width // patch
    y0, x0 = (height - rows * patch) // 2, (width - cols * patch) // 2
    kept = []
    for r in range(rows):
        for c in range(cols):
            y, x = y0 + r * patch, x0 + c * patch
            tile = image_rgb[y : y + patch, x : x + patch].astype(np.float64)
            luma = 0.299 * tile[..., 0] + 0.587 * tile[..., 1] + 0.114 * tile[..., 2]
            if luma.std() >= min_std:
                kept.append((y, x))
    return kept


@pytest.fixture
def photo_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    textured = _texture(rng, 150, 210)
    textured[:, :70] = 120  # a flat left column of patches, rejected by the std rule
    _write(root / "a/textured.png", textured)
    _write(root / "a/b/deep16.png", _texture(rng, 130, 140).astype(np.uint16) * 257)
    _write(root / "grey.jpg", _texture(rng, 140, 130)[..., 0])
    rgba = np.concatenate([_texture(rng, 64, 128), np.full((64, 128, 1), 255, np.uint8)], axis=2)
    _write(root / "rgba.png", rgba)
    _write(root / "flat.png", np.full((128, 128, 3), 90, np.uint8))
    _write(root / "small.png", _texture(rng, 40, 300))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage, not a jpeg")
    for i in range(12):  # enough files that every split is likely populated
        _write(root / f"extra/img_{i:02d}.png", _texture(rng, 64, 64))
    return root


def test_split_of_is_stable_and_close_to_8_1_1():
    names = [f"camera_{i // 100}/IMG_{i:05d}.JPG" for i in range(20_000)]
    splits = [photos.split_of(n) for n in names]
    assert splits == [photos.split_of(n) for n in names]
    counts = {s: splits.count(s) / len(names) for s in photos.SPLITS}
    assert abs(counts["train"] - 0.8) < 0.015
    assert abs(counts["val"] - 0.1) < 0.01 and abs(counts["test"] - 0.1) < 0.01
    # The split depends on the relative path only, in POSIX form on every platform.
    from pathlib import PureWindowsPath

    assert photos.split_of(PureWindowsPath("camera_1\\IMG_00001.JPG")) == photos.split_of(
        "camera_1/IMG_00001.JPG"
    )


def test_patch_origins_match_reference_rule():
    rng = np.random.default_rng(3)
    image = _texture(rng, 200, 300, amplitude=120)  # luma std near the threshold
    image[50:130, 40:200] //= 4
    for min_std in (5.0, 20.0, 28.0):
        assert photos.patch_origins(image, 64, min_std) == _reference_origins(image, 64, min_std)
    assert photos.patch_origins(image[:63], 64, 0.0) == []


def test_build_patch_index_content(photo_folder, tmp_path):
    with pytest.warns(UserWarning) as record:
        index = photos.build_patch_index(photo_folder, patch=PATCH, min_std=32, cache_dir=tmp_path / "c")
    assert len(record) == 1, "skipped files must be listed in a single warning"
    message = str(record[0].message)
    assert "broken.jpg" in message and "small.png" in message and "1 unreadable" in message
    assert index.unreadable and "broken.jpg" in index.unreadable[0]
    assert index.too_small == ("small.png",)

    expected = {}
    for path in images.list_images(photo_folder):
        rel = path.relative_to(photo_folder).as_posix()
        if rel == "broken.jpg":
            continue
        for y, x in _reference_origins(images.read_rgb(path), PATCH, 32):
            expected.setdefault(photos.split_of(rel), []).append(photos.PatchEntry(rel, y, x))
    for split in photos.SPLITS:
        assert list(index.entries(split)) == sorted(expected.get(split, []))
    paths = {e.path for s in photos.SPLITS for e in index.entries(s)}
    assert {"a/textured.png", "a/b/deep16.png", "grey.jpg", "rgba.png"} <= paths
    assert "flat.png" not in paths
    # 150 x 210 holds a centred 2 x 3 grid from (11, 9); the column over the flat band
    # (x < 70) is rejected, the two others kept.
    textured = [e for s in photos.SPLITS for e in index.entries(s) if e.path == "a/textured.png"]
    assert sorted((e.y, e.x) for e in textured) == [(11, 73), (11, 137), (75, 73), (75, 137)]
    assert index.image_path(textured[0]) == photo_folder.resolve() / "a/textured.png"


def test_cache_is_used_and_invalidated(photo_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning):
        first = photos.build_patch_index(photo_folder, patch=PATCH, cache_dir=cache)
    assert len(list((cache / "patch_index").glob("*.npz"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("a cache hit must not decode any image")

    monkeypatch.setattr(images, "read_rgb", refuse)
    with pytest.warns(UserWarning, match="broken.jpg"):  # still reported on a cache hit
        second = photos.build_patch_index(photo_folder, patch=PATCH, cache_dir=cache)
    assert second == first
    monkeypatch.undo()

    # Adding a file changes the key; the old files keep their split and patches.
    rng = np.random.default_rng(9)
    _write(photo_folder / "new/added.png", _texture(rng, 64, 64))
    with pytest.warns(UserWarning):
        third = photos.build_patch_index(photo_folder, patch=PATCH, cache_dir=cache)
    assert len(list((cache / "patch_index").glob("*.npz"))) == 2
    for split in photos.SPLITS:
        old = [e for e in third.entries(split) if e.path != "new/added.png"]
        assert old == list(first.entries(split))

    # Rewriting a file (new size and mtime) invalidates the cache too.
    target = photo_folder / "grey.jpg"
    _write(target, np.full((140, 130), 7, np.uint8))
    os.utime(target, ns=(1, 1))
    with pytest.warns(UserWarning):
        fourth = photos.build_patch_index(photo_folder, patch=PATCH, cache_dir=cache)
    assert "grey.jpg" not in {e.path for s in photos.SPLITS for e in fourth.entries(s)}


def test_no_usable_patch_is_a_clear_error(tmp_path):
    folder = tmp_path / "flat_only"
    _write(folder / "flat.png", np.full((128, 128, 3), 90, np.uint8))
    (folder / "broken.png").write_bytes(b"nope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"flat_only: no usable 64x64 patch.*1 unreadable"):
            photos.build_patch_index(folder, patch=PATCH, use_cache=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty: no image file"):
        photos.build_patch_index(empty, patch=PATCH, use_cache=False)
    with pytest.raises(FileNotFoundError):
        photos.build_patch_index(tmp_path / "absent", use_cache=False)


def test_bundled_photos_give_every_split(tmp_path):
    folder = bundled.default_photo_dir(cache_dir=tmp_path)
    assert (folder / "LICENSES.txt").is_file()
    assert bundled.default_photo_dir(cache_dir=tmp_path) == folder  # reused, not rewritten
    index = photos.build_patch_index(folder, cache_dir=tmp_path)
    assert index.patch_size == 256 and not index.unreadable
    for split in photos.SPLITS:
        assert index.entries(split), f"the bundled set has no {split} patch"
    entry = index.train[0]
    patch = images.read_rgb(index.image_path(entry))[entry.y : entry.y + 256, entry.x : entry.x + 256]
    assert patch.shape == (256, 256, 3)
