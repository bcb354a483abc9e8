"""Robust image reading: any file OpenCV decodes becomes a uint8 H x W x 3 RGB array.

Used by training (pristine photos), evaluation and inference alike, so every entry
point sees the same conversions:

- JPEG, PNG, TIFF, BMP, WebP (and the PNM family); 8 or 16 bit, float TIFF in [0, 1];
- grey becomes three equal channels, an alpha channel is dropped (not composited);
- 16-bit values are scaled to 8 bit by rounding ``v * 255 / 65535``;
- the EXIF orientation of a JPEG is applied (OpenCV does it for every flag set except
  ``IMREAD_UNCHANGED``, which only :func:`read_stored` uses);
- the file is read with ``open()`` and decoded with ``cv2.imdecode`` so non-ASCII paths
  work on every platform;
- a decompression bomb (more pixels than ``max_pixels``) is refused from the header,
  before any pixel is decoded, for PNG, JPEG, BMP, WebP and TIFF; other formats are
  checked after decoding.

:func:`read_stored` reads the samples as stored, unconverted (ground-truth masks), with
the same checks. Every failure raises :class:`ImageReadError`, whose message names the
file and the problem. An animated GIF or a multi-page TIFF is read as its first frame; :func:`frames_note`
says so, for the entry points to report it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

# Lower-case suffixes that list_images() collects.
IMAGE_SUFFIXES = (
    ".bmp",
    ".dib",
    ".jpeg",
    ".jpg",
    ".jpe",
    ".png",
    ".tif",
    ".tiff",
    ".webp",
    ".pbm",
    ".pgm",
    ".ppm",
    ".pnm",
)

# 300 megapixels: far above any camera photo, far below what exhausts a host's memory.
DEFAULT_MAX_PIXELS = 300_000_000

# ANYDEPTH keeps 16-bit data, ANYCOLOR keeps grey as one channel; together they are
# not IMREAD_UNCHANGED, so OpenCV still applies the EXIF orientation.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


class ImageReadError(ValueError):
    """An image could not be read; the message names the file and the problem."""


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Returns the image files under ``folder``, recursively, sorted by relative path.

    Hidden files and folders (a leading dot, e.g. macOS ``._x.jpg`` resource forks)
    are ignored. Symbolic links to folders are followed once (loops are cut).
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {str(root)!r} is not a directory")
    found: list[tuple[str, Path]] = []
    visited_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited_dirs:
            dirnames[:] = []
            continue
        visited_dirs.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            path = Path(dirpath) / name
            found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def read_rgb(
    path: str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    apply_orientation: bool = True,
) -> np.ndarray:
    """Reads an image file as a uint8 H x W x 3 RGB array (see the module docstring).

    ``apply_orientation=False`` keeps the stored pixel order, ignoring EXIF orientation:
    right for an image whose ground-truth mask annotates the stored raster.
    """
    return decode_rgb(
        _read_bytes(path), name=str(path), max_pixels=max_pixels, apply_orientation=apply_orientation
    )


def read_stored(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Reads an image file's samples as stored, with the checks and errors of ``read_rgb``.

    No conversion: OpenCV's channel order (grey, BGR, BGRA), 8 or 16 bit or float, alpha
    kept, EXIF orientation ignored. For ground-truth masks, whose stored values and raster
    are what they annotate.
    """
    return _decode(_read_bytes(path), str(path), max_pixels, cv2.IMREAD_UNCHANGED)


def decode_rgb(
    data: bytes,
    *,
    name: str = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    apply_orientation: bool = True,
) -> np.ndarray:
    """Decodes encoded image bytes as a uint8 H x W x 3 RGB array.

    ``name`` only serves the error messages (a path, an upload's name).
    """
    flags = _DECODE_FLAGS if apply_orientation else _DECODE_FLAGS | cv2.IMREAD_IGNORE_ORIENTATION
    decoded = _decode(data, name, max_pixels, flags)
    if decoded.ndim == 3 and decoded.shape[2] in (3, 4):
        # OpenCV hands out BGR(A); the project works in RGB. cvtColor is several times
        # faster than a reversed-stride numpy copy on camera-sized photos.
        code = cv2.COLOR_BGR2RGB if decoded.shape[2] == 3 else cv2.COLOR_BGRA2RGB
        decoded = cv2.cvtColor(decoded, code)
    return _convert(decoded, name)


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ImageReadError(f"{path}: cannot open the file ({e.strerror or e})") from e


def _decode(data: bytes, name: str, max_pixels: int, flags: int) -> np.ndarray:
    """cv2.imdecode with the size limit (from the header when it can be parsed) and clear errors."""
    if not data:
        raise ImageReadError(f"{name}: the file is empty")
    size = header_size(data)
    if size is not None:
        height, width = size
        if height <= 0 or width <= 0:
            raise ImageReadError(f"{name}: the header gives an empty image ({height}x{width})")
        if height * width > max_pixels:
            raise ImageReadError(
                f"{name}: {height}x{width} = {height * width} pixels exceeds the limit of "
                f"{max_pixels} pixels (possible decompression bomb); refused before decoding"
            )
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as e:
        # OpenCV's own limit (OPENCV_IO_MAX_IMAGE_PIXELS) and codec failures land here.
        message = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise ImageReadError(f"{name}: OpenCV could not decode the image ({message})") from e
    if decoded is None:
        raise ImageReadError(
            f"{name}: not a readable image (unknown format, truncated or corrupt data)"
        )
    if decoded.shape[0] * decoded.shape[1] > max_pixels:
        raise ImageReadError(
            f"{name}: {decoded.shape[0]}x{decoded.shape[1]} pixels exceeds the limit of "
            f"{max_pixels} pixels"
        )
    return decoded


def to_rgb_uint8(array: np.ndarray, name: str = "array") -> np.ndarray:
    """Converts an in-memory RGB(A) or grey array to uint8 H x W x 3 RGB.

    Accepts H x W, H x W x 1, H x W x 2 (grey + alpha), H x W x 3 and H x W x 4 (alpha
    dropped); uint8, uint16 (scaled to 8 bit), bool, and float in [0, 1] (values outside
    are clipped; NaN or infinity is an error). The channel order is taken as RGB.
    """
    return _convert(np.asarray(array), name)


def _convert(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[2] == 2:
        array = array[..., 0]  # grey + alpha
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ImageReadError(
            f"{name}: expected a grey, RGB or RGBA image, got an array of shape {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageReadError(f"{name}: the image is empty (shape {array.shape})")
    array = _to_uint8(array, name)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        # Round to nearest: v * 255 / 65535 = v / 257.
        return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ImageReadError(f"{name}: the float image holds NaN or infinite values")
        return np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ImageReadError(
        f"{name}: unsupported pixel type {array.dtype} (expected uint8, uint16, bool or "
        "float in [0, 1])"
    )


def header_size(data: bytes) -> tuple[int, int] | None:
    """Returns (height, width) from the header of a PNG, JPEG, BMP, WebP or TIFF file.

    Returns None for other formats or a header too damaged to parse; decoding then
    decides. Only reads the header, never the pixel data.
    """
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return height, width
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:2] == b"BM":
            return _bmp_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
    except (struct.error, IndexError):
        return None
    return None


# SOFn markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame
            return None
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF_MARKERS:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            # A height of 0 defers to a DNL marker after the scan: let decoding decide.
            return (height, width) if height > 0 else None
        pos += 2 + length
    return None


def _bmp_size(data: bytes) -> tuple[int, int]:
    (header_len,) = struct.unpack("<I", data[14:18])
    if header_len == 12:  # BITMAPCOREHEADER
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return abs(height), abs(width)  # a negative height means top-down rows


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", data[26:30])
        return height & 0x3FFF, width & 0x3FFF
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            return None
        (bits,) = struct.unpack("<I", data[21:25])
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return height, width
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    endian = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(endian + "I", data[4:8])
    (count,) = struct.unpack(endian + "H", data[ifd : ifd + 2])
    values: dict[int, int] = {}
    for i in range(count):
        entry = data[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        tag, kind, _ = struct.unpack(endian + "HHI", entry[:8])
        if tag in (256, 257):  # ImageWidth, ImageLength
            if kind == 3:  # SHORT
                (values[tag],) = struct.unpack(endian + "H", entry[8:10])
            elif kind == 4:  # LONG
                (values[tag],) = struct.unpack(endian + "I", entry[8:12])
    if 256 in values and 257 in values:
        return values[257], values[256]
    return None


# --------------------------------------------------------------------------------------------
# Files holding several frames
# --------------------------------------------------------------------------------------------
_MAX_FRAMES_COUNTED = 100_000


def frames_note(data: bytes) -> str:
    """"" for a single image; for an animated GIF or a multi-page TIFF (read as its first frame),
    a note saying so, e.g. "multi-page TIFF: first of 3 pages read". Reads the container only."""
    try:
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            pages = _tiff_pages(data)
            return f"multi-page TIFF: first of {pages} pages read" if pages > 1 else ""
        if data[:6] in (b"GIF87a", b"GIF89a"):
            frames = _gif_frames(data)
            return f"animated GIF: first of {frames} frames read" if frames > 1 else ""
    except (struct.error, IndexError):
        return ""
    return ""


def file_frames_note(path: str | os.PathLike) -> str:
    """:func:`frames_note` of a file ("" when it cannot be read: reading it reports that)."""
    try:
        with open(path, "rb") as f:
            return frames_note(f.read())
    except OSError:
        return ""


def _tiff_pages(data: bytes) -> int:
    endian = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(endian + "I", data[4:8])
    pages, seen = 0, set()
    while ifd and ifd not in seen and pages < _MAX_FRAMES_COUNTED:
        seen.add(ifd)
        pages += 1
        (count,) = struct.unpack(endian + "H", data[ifd : ifd + 2])
        (ifd,) = struct.unpack(endian + "I", data[ifd + 2 + 12 * count : ifd + 6 + 12 * count])
    return pages


def _gif_frames(data: bytes) -> int:
    pos = 13  # header (6) and logical screen descriptor (7)
    if data[10] & 0x80:  # global colour table
        pos += 3 << ((data[10] & 7) + 1)
    frames = 0
    while pos < len(data) and frames < _MAX_FRAMES_COUNTED:
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x2C:  # image descriptor, optional local colour table, LZW code size
            frames += 1
            flags = data[pos + 9]
            pos += 10 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0) + 1
        elif block == 0x21:  # extension: label, then sub-blocks
            pos += 2
        else:
            break
        while data[pos]:  # sub-blocks, ended by an empty one
            pos += data[pos] + 1
        pos += 1
    return frames
