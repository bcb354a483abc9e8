"""Tests for mantra_jax.data.images: every format and pixel type to uint8 RGB, clear errors."""

import os
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from mantra_jax.data import images


def _write(path, array_bgr, params=()):
    ok, encoded = cv2.imencode(path.suffix, array_bgr, list(params))
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Inserts a minimal big-endian EXIF APP1 segment holding only the Orientation tag."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + app1 + jpeg[2:]


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(24, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm"])
def test_lossless_formats_round_trip_as_rgb(tmp_path, rgb, suffix):
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if suffix == ".webp" else []
    path = _write(tmp_path / f"photo{suffix}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    out = images.read_rgb(path)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out, rgb)


def test_sixteen_bit_colour_is_scaled_to_eight_bit(tmp_path):
    rng = np.random.default_rng(1)
    rgb16 = rng.integers(0, 65536, size=(16, 20, 3), dtype=np.uint16)
    rgb16[0, 0] = (0, 65535, 128)  # the extremes and a value that rounds down to 0
    path = _write(tmp_path / "deep.png", cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    expected = np.rint(rgb16.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    np.testing.assert_array_equal(images.read_rgb(path), expected)
    assert tuple(images.read_rgb(path)[0, 0]) == (0, 255, 0)


def test_sixteen_bit_grey_becomes_three_equal_channels(tmp_path):
    grey16 = np.arange(0, 65536, 256, dtype=np.uint16).reshape(16, 16)
    path = _write(tmp_path / "grey16.png", grey16)
    out = images.read_rgb(path)
    expected = np.rint(grey16 * 255.0 / 65535.0).astype(np.uint8)
    assert out.shape == (16, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


def test_grey_jpeg_becomes_three_equal_channels(tmp_path):
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))
    path = _write(tmp_path / "grey.jpg", grey)
    decoded = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_GRAYSCALE)
    out = images.read_rgb(path)
    assert out.shape == (16, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], decoded)


def test_rgba_png_drops_alpha(tmp_path, rgb):
    alpha = np.zeros(rgb.shape[:2] + (1,), np.uint8)  # fully transparent: must not matter
    bgra = np.concatenate([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), alpha], axis=2)
    path = _write(tmp_path / "rgba.png", bgra)
    np.testing.assert_array_equal(images.read_rgb(path), rgb)


def test_exif_orientation_is_applied(tmp_path):
    # Orientation 6: the stored pixels must be turned 90 degrees clockwise for display.
    stored = np.zeros((32, 48, 3), np.uint8)
    stored[:8, :8] = 255  # a white top-left corner ends top-right
    ok, encoded = cv2.imencode(".jpg", stored)
    assert ok
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_with_exif_orientation(encoded.tobytes(), 6))
    as_stored = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert as_stored.shape == (32, 48, 3)  # the crafted EXIF did not break the JPEG
    out = images.read_rgb(path)
    assert out.shape == (48, 32, 3)
    np.testing.assert_array_equal(out, np.rot90(as_stored[..., ::-1], k=-1))
    assert out[:8, -8:].mean() > 200 and out[:8, :8].mean() < 50
    stored_order = images.read_rgb(path, apply_orientation=False)
    np.testing.assert_array_equal(stored_order, as_stored[..., ::-1])


def test_non_ascii_path(tmp_path, rgb):
    folder = tmp_path / "fotos_ñ_写真"
    folder.mkdir()
    path = _write(folder / "été.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(images.read_rgb(path), rgb)


def test_corrupt_empty_and_missing_files_name_the_file(tmp_path, rgb):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(images.ImageReadError, match="corrupt.jpg"):
        images.read_rgb(corrupt)
    truncated = _write(tmp_path / "truncated.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(images.ImageReadError, match="truncated.png"):
        images.read_rgb(truncated)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(images.ImageReadError, match="empty.png.*empty"):
        images.read_rgb(empty)
    with pytest.raises(images.ImageReadError, match="missing.png"):
        images.read_rgb(tmp_path / "missing.png")
    assert issubclass(images.ImageReadError, ValueError)


def test_decompression_bomb_is_refused_from_the_header(tmp_path):
    # A valid PNG signature and IHDR announcing 100000 x 100000 pixels, then nothing:
    # refusing it must not need (nor try) to decode 10 gigapixels.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00" * 4
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with pytest.raises(images.ImageReadError, match=r"bomb.png.*10000000000 pixels.*limit"):
        images.read_rgb(path)


def test_read_stored_keeps_the_samples_and_raster_with_the_same_checks(tmp_path, rgb):
    bgra16 = np.random.default_rng(1).integers(0, 65536, (5, 7, 4), dtype=np.uint16)
    path = _write(tmp_path / "stored.png", bgra16)
    stored = images.read_stored(path)
    assert stored.dtype == np.uint16 and np.array_equal(stored, bgra16)  # BGRA, 16 bits, alpha kept
    ok, jpeg = cv2.imencode(".jpg", np.zeros((12, 16, 3), np.uint8))
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(_with_exif_orientation(jpeg.tobytes(), 6))
    assert images.read_stored(rotated).shape == (12, 16, 3)  # the stored raster
    with pytest.raises(images.ImageReadError, match="stored.png.*exceeds the limit"):
        images.read_stored(path, max_pixels=34)
    with pytest.raises(images.ImageReadError, match="missing.png"):
        images.read_stored(tmp_path / "missing.png")


@pytest.mark.parametrize(
    "suffix, params",
    [(".png", []), (".jpg", []), (".bmp", []), (".tif", []), (".webp", []),
     (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])],
)
def test_header_size_and_pixel_limit_for_each_format(tmp_path, rgb, suffix, params):
    path = _write(tmp_path / f"photo{suffix}", rgb, params)
    assert images.header_size(path.read_bytes()) == rgb.shape[:2]
    limit = rgb.shape[0] * rgb.shape[1] - 1
    with pytest.raises(images.ImageReadError, match="exceeds the limit"):
        images.read_rgb(path, max_pixels=limit)
    assert images.read_rgb(path, max_pixels=limit + 1).shape == rgb.shape


def test_jpeg_header_size_skips_exif_segment(rgb):
    ok, encoded = cv2.imencode(".jpg", rgb)
    assert images.header_size(_with_exif_orientation(encoded.tobytes(), 6)) == (24, 40)


def test_to_rgb_uint8_conversions():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(images.to_rgb_uint8(rgb), rgb)
    rgba = np.concatenate([rgb, np.full((5, 6, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(images.to_rgb_uint8(rgba), rgb)
    grey = rgb[..., 0]
    np.testing.assert_array_equal(images.to_rgb_uint8(grey), np.stack([grey] * 3, axis=2))
    np.testing.assert_array_equal(images.to_rgb_uint8(grey[..., None]), np.stack([grey] * 3, axis=2))
    np.testing.assert_array_equal(images.to_rgb_uint8(rgb.astype(np.uint16) * 257), rgb)
    floats = rgb / 255.0
    np.testing.assert_array_equal(images.to_rgb_uint8(floats.astype(np.float32)), rgb)
    clipped = images.to_rgb_uint8(np.array([[[-0.5, 0.5, 1.5]]]))
    np.testing.assert_array_equal(clipped, [[[0, 128, 255]]])
    np.testing.assert_array_equal(images.to_rgb_uint8(np.eye(2, dtype=bool))[..., 1], [[255, 0], [0, 255]])


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 4, 5), np.uint8), "shape"),
        (np.zeros((4,), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.zeros((4, 4, 3), np.int32), "int32"),
        (np.full((4, 4, 3), np.nan), "NaN"),
    ],
)
def test_to_rgb_uint8_rejects_bad_arrays(array, message):
    with pytest.raises(images.ImageReadError, match=message):
        images.to_rgb_uint8(array, name="upload.bin")


def test_list_images_recursive_sorted_and_filtered(tmp_path, rgb):
    for rel in ["b.png", "a/z.JPG", "a/c.tif", "a/deeper/d.webp", ".hidden.png", ".git/x.png"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    found = images.list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/c.tif", "a/deeper/d.webp", "a/z.JPG", "b.png"
    ]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        images.list_images(tmp_path / "nowhere")
    with pytest.raises(NotADirectoryError, match="b.png"):
        images.list_images(tmp_path / "b.png")


# -- every file of a folder listed or accounted for; the header checked before any decoding ------
_GIF_FRAME = bytes.fromhex("21f9040100000000" "2c000000000100010000" "0202440100")
ANIMATED_GIF = bytes.fromhex("474946383961" "01000100800000" "000000ffffff") + _GIF_FRAME * 2 + b"\x3b"


def _bigtiff(width, height, samples=3):
    entries = [(256, 16, width), (257, 16, height), (277, 3, samples)]
    data = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<Q", len(entries))
    data += b"".join(struct.pack("<HHQQ", tag, kind, 1, value) for tag, kind, value in entries)
    return data + struct.pack("<Q", 0) + b"\x00" * 64


def _five_channel_tiff():
    """An uncompressed 2 x 2 TIFF of 5 samples per pixel (OpenCV reads none)."""
    pixels = bytes(range(20))
    entries = [(256, 3, 1, 2), (257, 3, 1, 2), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 0), (277, 3, 1, 5), (278, 3, 1, 2), (279, 4, 1, len(pixels)), (284, 3, 1, 1)]
    ifd = 8
    data_at = ifd + 2 + 12 * len(entries) + 4
    entries = [(t, k, c, data_at if t == 273 else v) for t, k, c, v in entries]
    out = b"II*\x00" + struct.pack("<I", ifd) + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        out += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3
                                                          else struct.pack("<I", value))
    return out + struct.pack("<I", 0) + pixels


def test_every_file_of_a_folder_is_listed_or_accounted_for(tmp_path):
    ok, png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "a.png").write_bytes(png.tobytes())
    (tmp_path / "anim.gif").write_bytes(ANIMATED_GIF)
    (tmp_path / "notes.txt").write_text("x")
    os.mkfifo(tmp_path / "fifo.png")
    os.symlink("nowhere.png", tmp_path / "dangling.png")
    os.symlink("loop.png", tmp_path / "loop.png")
    skipped = []
    assert [p.name for p in images.list_images(tmp_path, skipped)] == ["a.png", "anim.gif"]
    reasons = {Path(path).name: reason for path, reason in skipped}
    assert set(reasons) == {"notes.txt", "fifo.png", "dangling.png", "loop.png"}
    assert "FIFO" in reasons["fifo.png"] and "broken symbolic link" in reasons["dangling.png"]
    assert "link loop" in reasons["loop.png"] and "not an image file name" in reasons["notes.txt"]
    with pytest.raises(images.ImageReadError, match="FIFO"):  # never opened: it would block
        images.read_rgb(tmp_path / "fifo.png")
    assert images.read_rgb(tmp_path / "anim.gif").shape == (1, 1, 3)
    assert images.file_frames_note(tmp_path / "anim.gif") == "animated GIF: first of 2 frames read"


def test_sizes_come_from_the_header_and_huge_files_are_not_read(tmp_path):
    (tmp_path / "big.tif").write_bytes(_bigtiff(18000, 18000))
    assert images.header_size(_bigtiff(18000, 18000)) == (18000, 18000)
    with pytest.raises(images.ImageReadError, match="18000x18000 = 324000000 pixels exceeds .* before decoding"):
        images.read_rgb(tmp_path / "big.tif")
    (tmp_path / "five.tif").write_bytes(_five_channel_tiff())
    with pytest.raises(images.ImageReadError, match="5 samples per pixel, which is not read"):
        images.read_rgb(tmp_path / "five.tif")
    with open(tmp_path / "sparse.png", "wb") as f:  # 3 GiB of nothing, on a sparse file
        f.truncate(3 << 30)
    with pytest.raises(images.ImageReadError, match="refused before reading"):
        images.read_rgb(tmp_path / "sparse.png")
