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

import contextlib
import errno
import mmap
import os
import stat
import struct
from pathlib import Path

import cv2
import numpy as np

# Lower-case suffixes that list_images() collects.
IMAGE_SUFFIXES = (
    ".gif",
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


def list_images(folder: str | os.PathLike, skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """Returns the image files under ``folder``, recursively, sorted by relative path.

    Hidden files and folders (a leading dot, e.g. macOS ``._x.jpg`` resource forks)
    are ignored. Symbolic links to folders are followed once (loops are cut). What else the
    folder holds is appended to ``skipped`` (when given) as (path, reason), so that every file
    is either listed or accounted for: files of other suffixes, broken symbolic links and link
    loops, what is not a regular file (a FIFO, a socket, a device), folders that cannot be read.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {str(root)!r} is not a directory")
    found: list[tuple[str, Path]] = []
    left: list[tuple[str, str]] = []
    visited_dirs: set[str] = set()

    def unreadable(error: OSError):
        left.append((str(error.filename), f"a folder that cannot be read ({error.strerror or error})"))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        real = os.path.realpath(dirpath)
        if real in visited_dirs:
            dirnames[:] = []
            continue
        visited_dirs.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            reason = file_problem(path)
            if reason is None and Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                reason = f"not an image file name (suffix {Path(name).suffix or 'none'}; read: {', '.join(IMAGE_SUFFIXES)})"
            if reason is None:
                found.append((path.relative_to(root).as_posix(), path))
            else:
                left.append((str(path), reason))
    found.sort(key=lambda item: item[0])
    if skipped is not None:
        skipped.extend(sorted(left))
    return [path for _, path in found]


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as an image file (None: a regular file, or a link to one):
    a broken symbolic link or a link loop, a FIFO, socket or device (opening a FIFO would wait
    forever), a folder."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return ("a broken symbolic link (its target does not exist)" if os.path.islink(path)
                else "no such file or folder")
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop, not an image"
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")
    return f"{kind}, not an image file"


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
    with _mapped(path, max_pixels) as data:
        return decode_rgb(data, name=str(path), max_pixels=max_pixels, apply_orientation=apply_orientation)


def read_stored(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Reads an image file's samples as stored, with the checks and errors of ``read_rgb``.

    No conversion: OpenCV's channel order (grey, BGR, BGRA), 8 or 16 bit or float, alpha
    kept, EXIF orientation ignored. For ground-truth masks, whose stored values and raster
    are what they annotate.
    """
    with _mapped(path, max_pixels) as data:
        return _decode(data, str(path), max_pixels, cv2.IMREAD_UNCHANGED)


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


# Bytes per pixel of the largest uncompressed layout (float64 RGBA), and room for metadata: a file
# larger than its pixel limit allows cannot be an image within it. OpenCV decodes buffers of
# fewer than 2**31 bytes only.
_MAX_BYTES_PER_PIXEL = 32
_METADATA_BYTES = 64 << 20
_MAX_DECODED_BYTES = 2**31 - 1


@contextlib.contextmanager
def _mapped(path: str | os.PathLike, max_pixels: int):
    """The file's bytes, memory-mapped: the header checks read only the header, however large the
    file. Refused first: what is not a regular file (a FIFO would block), an empty file, and a
    file too large for any image within ``max_pixels``."""
    problem = file_problem(path)
    if problem is not None:
        raise ImageReadError(f"{path}: {problem}")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ImageReadError(f"{path}: the file is empty")
            if size > min(max(max_pixels, 0) * _MAX_BYTES_PER_PIXEL + _METADATA_BYTES, _MAX_DECODED_BYTES):
                raise ImageReadError(f"{path}: a file of {size} bytes, more than an image within the limit of "
                                     f"{max_pixels} pixels (and the decoder's 2 GiB) can take; refused before reading")
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ImageReadError(f"{path}: cannot open the file ({e.strerror or e})") from e
    try:
        yield mapped
    finally:
        with contextlib.suppress(BufferError):  # a view still held (an error's traceback): the GC closes it
            mapped.close()


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
        samples = _tiff_tags(data).get(277) if data[:4] in _TIFF_MAGIC else None
        if samples is not None and samples not in (1, 2, 3, 4):
            raise ImageReadError(f"{name}: a TIFF of {samples} samples per pixel, which is not read (grey, "
                                 "grey and alpha, RGB and RGBA are)")
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
        if data[:4] in _TIFF_MAGIC:
            return _tiff_size(data)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return height, width
    except (struct.error, IndexError, ValueError):
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


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic TIFF, then BigTIFF


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    values = _tiff_tags(data)
    if 256 in values and 257 in values:  # ImageWidth, ImageLength
        return values[257], values[256]
    return None


def _tiff_tags(data: bytes) -> dict[int, int]:
    """ImageWidth (256), ImageLength (257) and SamplesPerPixel (277) of the first page of a TIFF or
    BigTIFF, from its first directory only ({} when it cannot be parsed)."""
    endian = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    # BigTIFF: 8-byte offsets and counts, 20-byte entries (tag, type, count, value or offset).
    offset, count_format, entry_size, value_at = ("Q", "Q", 20, 12) if big else ("I", "H", 12, 8)
    values: dict[int, int] = {}
    try:
        (ifd,) = struct.unpack(endian + offset, data[8:16] if big else data[4:8])
        count_size = struct.calcsize(count_format)
        (count,) = struct.unpack(endian + count_format, data[ifd : ifd + count_size])
        for i in range(min(count, 4096)):
            start = ifd + count_size + entry_size * i
            entry = data[start : start + entry_size]
            tag, kind = struct.unpack(endian + "HH", entry[:4])
            if tag in (256, 257, 277):
                kinds = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8 (BigTIFF)
                if kind in kinds:
                    size = struct.calcsize(kinds[kind])
                    (values[tag],) = struct.unpack(endian + kinds[kind], entry[value_at : value_at + size])
    except (struct.error, IndexError, ValueError):
        return values
    return values


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
        with _mapped(path, DEFAULT_MAX_PIXELS) as data:
            return frames_note(data)
    except ImageReadError:
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
