"""The IMC manipulation bank: one deterministic image function per taxonomy leaf.

Each of the 380 leaves of `taxonomy.csv` is a function `fn(image, rng) -> image` from a uint8
H x W x 3 RGB image (at least 8x8) to a uint8 image of the same shape, built from numpy and OpenCV,
with PyWavelets for wavelet denoising and Pillow for palette quantisation and dithering (OpenCV
has neither). Only the noises draw from `rng`; every other leaf ignores it, so the same image and
the same seed always give the same bytes.

The published figure names each manipulation and its parameter but not the exact algorithm. The
choices below were made once; trained models depend on them, so do not change them:

- BoxBlur / GaussianBlur / MedianBlur K: a K x K kernel (cv2.blur, cv2.GaussianBlur with sigma
  derived from K by OpenCV, cv2.medianBlur); OpenCV's default border (reflect-101).
- WaveletBlur K: wavelet shrinkage that removes white noise of standard deviation K (8-bit levels):
  per channel, a 3-level 'db2' decomposition (fewer levels when the image is too small), every
  detail coefficient soft-thresholded at 3K, then reconstruction. Independent of the image size.
- <INTERP>Resize s: resize to round(s*W) x round(s*H) (at least 1 pixel) with the OpenCV
  interpolation named, then back to W x H with the same interpolation, so the patch keeps its size.
- JPEGCompress Q: real libjpeg encode at quality Q (4:2:0 chroma subsampling, set explicitly) and
  decode. JPEGDoubleCompress Q1/Q2: encode at Q1, decode, encode at Q2, decode. WEBPCompress Q:
  real lossy libwebp encode at quality Q (Q=100 is still lossy in OpenCV) and decode.
- Close/Dilate/Erode/OpenMorph S: grey-level morphology per channel with an S x S square
  structuring element (OpenCV's default anchor, the centre; S may be even).
- GaussianNoise S: add N(0, S^2) per pixel and channel, S in 8-bit levels.
- ImpluseNoise P (sic): each pixel, independently with probability P percent, becomes black or
  white (all three channels, each with probability 1/2).
- PoissonNoise L: signal-dependent shot noise whose standard deviation is L levels at mid-grey
  (128): out = Poisson(x * 128 / L^2) * L^2 / 128, so the std at intensity x is L * sqrt(x / 128).
- UniformNoise M: add an integer drawn uniformly from [-M, M] per pixel and channel.
- Noisy values are rounded to the nearest integer and clipped to 0..255.
- Quantization C: an adaptive palette of C colours by Pillow's fast octree, no dithering.
- Dithering: Pillow's fixed 216-colour web palette (6 levels per channel) with Floyd-Steinberg
  error diffusion.
- AutoContrast C: per channel, clip C percent of the pixels at each end of the histogram and
  stretch the remaining range linearly to 0..255 (C=0 is a plain min-max stretch; a channel whose
  range collapses is left unchanged).
- HistEq C: a 3-bit mask choosing which channels cv2.equalizeHist equalises: bit 0 (1) red,
  bit 1 (2) green, bit 2 (4) blue; C=7 equalises all three.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import cv2
import numpy as np
import pywt
from PIL import Image

from mantra_jax.imc import taxonomy

NUM_LEAVES = taxonomy.LEVEL_SIZES[-1]
MIN_SIZE = 8

# --------------------------------------------------------------------------------------------
# Blur


def box_blur(image: np.ndarray, rng: np.random.Generator, *, kernel: int) -> np.ndarray:
    del rng
    return cv2.blur(image, (kernel, kernel))


def gaussian_blur(image: np.ndarray, rng: np.random.Generator, *, kernel: int) -> np.ndarray:
    del rng
    return cv2.GaussianBlur(image, (kernel, kernel), 0)


def median_blur(image: np.ndarray, rng: np.random.Generator, *, kernel: int) -> np.ndarray:
    del rng
    return cv2.medianBlur(image, kernel)


_WAVELET = "db2"
_WAVELET_LEVELS = 3
_WAVELET_THRESHOLD_PER_K = 3.0


def wavelet_blur(image: np.ndarray, rng: np.random.Generator, *, kernel: int) -> np.ndarray:
    del rng
    height, width = image.shape[:2]
    wavelet = pywt.Wavelet(_WAVELET)
    levels = min(_WAVELET_LEVELS, pywt.dwt_max_level(min(height, width), wavelet.dec_len))
    levels = max(levels, 1)
    threshold = _WAVELET_THRESHOLD_PER_K * kernel
    coeffs = pywt.wavedec2(image.astype(np.float32), wavelet, level=levels, axes=(0, 1))
    shrunk = [coeffs[0]] + [
        tuple(pywt.threshold(detail, threshold, mode="soft") for detail in level)
        for level in coeffs[1:]
    ]
    restored = pywt.waverec2(shrunk, wavelet, axes=(0, 1))[:height, :width]
    return _to_uint8(restored)


# --------------------------------------------------------------------------------------------
# Resampling

INTERPOLATIONS = {
    "AREA": cv2.INTER_AREA,
    "CUBIC": cv2.INTER_CUBIC,
    "LANCZOS4": cv2.INTER_LANCZOS4,
    "LINEAR": cv2.INTER_LINEAR,
    "NEAREST": cv2.INTER_NEAREST,
}


def resample(image: np.ndarray, rng: np.random.Generator, *, scale: float, interpolation: str) -> np.ndarray:
    del rng
    height, width = image.shape[:2]
    flag = INTERPOLATIONS[interpolation]
    small_size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    small = cv2.resize(image, small_size, interpolation=flag)
    return cv2.resize(small, (width, height), interpolation=flag)


# --------------------------------------------------------------------------------------------
# Compression (OpenCV codecs expect BGR; convert at this boundary so colours are encoded right)


def _encode_decode(image_rgb: np.ndarray, extension: str, params: list[int]) -> np.ndarray:
    bgr = np.ascontiguousarray(image_rgb[..., ::-1])
    ok, encoded = cv2.imencode(extension, bgr, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image_rgb.shape} image as {extension}")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return np.ascontiguousarray(decoded[..., ::-1])


def _jpeg_params(quality: int) -> list[int]:
    return [
        cv2.IMWRITE_JPEG_QUALITY, int(quality),
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
        cv2.IMWRITE_JPEG_OPTIMIZE, 0,
        cv2.IMWRITE_JPEG_PROGRESSIVE, 0,
    ]


def jpeg_compress(image: np.ndarray, rng: np.random.Generator, *, quality: int) -> np.ndarray:
    del rng
    return _encode_decode(image, ".jpg", _jpeg_params(quality))


def jpeg_double_compress(
    image: np.ndarray, rng: np.random.Generator, *, qualities: tuple[int, int]
) -> np.ndarray:
    del rng
    first, second = qualities
    once = _encode_decode(image, ".jpg", _jpeg_params(first))
    return _encode_decode(once, ".jpg", _jpeg_params(second))


def webp_compress(image: np.ndarray, rng: np.random.Generator, *, quality: int) -> np.ndarray:
    del rng
    return _encode_decode(image, ".webp", [cv2.IMWRITE_WEBP_QUALITY, int(quality)])


# --------------------------------------------------------------------------------------------
# Morphology

MORPH_OPS = {
    "Close": cv2.MORPH_CLOSE,
    "Dilate": cv2.MORPH_DILATE,
    "Erode": cv2.MORPH_ERODE,
    "Open": cv2.MORPH_OPEN,
}


def morphology(image: np.ndarray, rng: np.random.Generator, *, operation: str, size: int) -> np.ndarray:
    del rng
    # A square element keeps the operation separable, hence fast for the largest sizes.
    element = cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))
    return cv2.morphologyEx(image, MORPH_OPS[operation], element)


# --------------------------------------------------------------------------------------------
# Noise (the only leaves that use rng)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def gaussian_noise(image: np.ndarray, rng: np.random.Generator, *, sigma: int) -> np.ndarray:
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    return _to_uint8(image.astype(np.float32) + np.float32(sigma) * noise)


def impulse_noise(image: np.ndarray, rng: np.random.Generator, *, percent: int) -> np.ndarray:
    probability = percent / 100.0
    draw = rng.random(image.shape[:2])
    out = image.copy()
    out[draw < probability / 2] = 255
    out[(draw >= probability / 2) & (draw < probability)] = 0
    return out


_POISSON_REFERENCE_LEVEL = 128.0


def poisson_noise(image: np.ndarray, rng: np.random.Generator, *, level: int) -> np.ndarray:
    # Photons per grey level chosen so that the std at mid-grey is `level` grey levels.
    photons_per_level = _POISSON_REFERENCE_LEVEL / float(level) ** 2
    counts = rng.poisson(image.astype(np.float64) * photons_per_level)
    return _to_uint8(counts / photons_per_level)


def uniform_noise(image: np.ndarray, rng: np.random.Generator, *, half_width: int) -> np.ndarray:
    noise = rng.integers(-half_width, half_width, size=image.shape, dtype=np.int16, endpoint=True)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Quantisation


def quantize_colours(image: np.ndarray, rng: np.random.Generator, *, colours: int) -> np.ndarray:
    del rng
    paletted = Image.fromarray(image).quantize(
        colors=int(colours), method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
    )
    return np.array(paletted.convert("RGB"))


def dither_web_palette(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    del rng
    paletted = Image.fromarray(image).convert(
        "P", palette=Image.Palette.WEB, dither=Image.Dither.FLOYDSTEINBERG
    )
    return np.array(paletted.convert("RGB"))


# --------------------------------------------------------------------------------------------
# Contrast


def _channel_histograms(image: np.ndarray) -> np.ndarray:
    return np.stack([np.bincount(image[..., c].ravel(), minlength=256) for c in range(3)])


def auto_contrast(image: np.ndarray, rng: np.random.Generator, *, cutoff_percent: int) -> np.ndarray:
    del rng
    histograms = _channel_histograms(image)
    total = image.shape[0] * image.shape[1]
    cut = int(total * cutoff_percent / 100)
    values = np.arange(256, dtype=np.float64)
    lut = np.empty((256, 3), dtype=np.uint8)
    for channel, hist in enumerate(histograms):
        below = np.cumsum(hist)  # pixels <= v
        above = total - below + hist  # pixels >= v
        low = int(np.argmax(below > cut))
        high = int(255 - np.argmax(above[::-1] > cut))
        if high <= low:
            lut[:, channel] = values.astype(np.uint8)
        else:
            lut[:, channel] = _to_uint8((values - low) * (255.0 / (high - low)))
    return cv2.LUT(image, lut.reshape(1, 256, 3))


_HISTEQ_CHANNEL_BITS = (1, 2, 4)  # red, green, blue


def histogram_equalize(image: np.ndarray, rng: np.random.Generator, *, channel_mask: int) -> np.ndarray:
    del rng
    channels = list(cv2.split(image))
    for channel, bit in enumerate(_HISTEQ_CHANNEL_BITS):
        if channel_mask & bit:
            channels[channel] = cv2.equalizeHist(channels[channel])
    return cv2.merge(channels)


# --------------------------------------------------------------------------------------------
# Registry


@dataclasses.dataclass(frozen=True)
class Manipulation:
    """One leaf: its id, names, parameter and the function that applies it."""

    leaf: int
    label: str
    type: str
    family: str
    param: Any  # int, float, (q1, q2) or None (Dithering has no parameter)
    fn: Callable[[np.ndarray, np.random.Generator], np.ndarray]

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return apply(self.leaf, image, rng)


def _function_for(record: taxonomy.LeafRecord) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    type_name, value = record.type, record.param_value
    if type_name == "BoxBlur":
        return functools.partial(box_blur, kernel=value)
    if type_name == "GaussianBlur":
        return functools.partial(gaussian_blur, kernel=value)
    if type_name == "MedianBlur":
        return functools.partial(median_blur, kernel=value)
    if type_name == "WaveletBlur":
        return functools.partial(wavelet_blur, kernel=value)
    if type_name.endswith("Resize") and type_name[: -len("Resize")] in INTERPOLATIONS:
        return functools.partial(resample, scale=value, interpolation=type_name[: -len("Resize")])
    if type_name == "JPEGCompress":
        return functools.partial(jpeg_compress, quality=value)
    if type_name == "JPEGDoubleCompress":
        return functools.partial(jpeg_double_compress, qualities=value)
    if type_name == "WEBPCompress":
        return functools.partial(webp_compress, quality=value)
    if type_name.endswith("Morph") and type_name[: -len("Morph")] in MORPH_OPS:
        return functools.partial(morphology, operation=type_name[: -len("Morph")], size=value)
    if type_name == "GaussianNoise":
        return functools.partial(gaussian_noise, sigma=value)
    if type_name == "ImpluseNoise":
        return functools.partial(impulse_noise, percent=value)
    if type_name == "PoissonNoise":
        return functools.partial(poisson_noise, level=value)
    if type_name == "UniformNoise":
        return functools.partial(uniform_noise, half_width=value)
    if type_name == "Quantization":
        return functools.partial(quantize_colours, colours=value)
    if type_name == "Dithering":
        return dither_web_palette
    if type_name == "AutoContrast":
        return functools.partial(auto_contrast, cutoff_percent=value)
    if type_name == "HistEq":
        return functools.partial(histogram_equalize, channel_mask=value)
    raise ValueError(f"taxonomy leaf {record.leaf} ({record.label}): no manipulation for type {type_name!r}")


REGISTRY: tuple[Manipulation, ...] = tuple(
    Manipulation(
        leaf=rec.leaf,
        label=rec.label,
        type=rec.type,
        family=rec.family,
        param=rec.param_value,
        fn=_function_for(rec),
    )
    for rec in taxonomy.LEAF_TABLE
)
_BY_LABEL = {m.label: m for m in REGISTRY}


def get(leaf_or_label: int | str) -> Manipulation:
    """The manipulation with this 0-based leaf id or this label (e.g. "BoxBlur-K29")."""
    if isinstance(leaf_or_label, str):
        if leaf_or_label not in _BY_LABEL:
            raise KeyError(f"no IMC manipulation labelled {leaf_or_label!r}")
        return _BY_LABEL[leaf_or_label]
    leaf = _check_leaf(leaf_or_label)
    return REGISTRY[leaf]


def types() -> list[str]:
    """Manipulation type names, in order of first leaf."""
    return list(dict.fromkeys(m.type for m in REGISTRY))


def families() -> list[str]:
    """Family names, index = level-0 class id."""
    return list(taxonomy.FAMILY_NAMES)


def of_type(type_name: str) -> list[Manipulation]:
    members = [m for m in REGISTRY if m.type == type_name]
    if not members:
        raise KeyError(f"no IMC manipulation type {type_name!r}; known types: {types()}")
    return members


def of_family(family: str | int) -> list[Manipulation]:
    """Leaves of a family, by name ("blur") or 0-based index."""
    if isinstance(family, str):
        if family not in taxonomy.FAMILY_NAMES:
            raise KeyError(f"no IMC family {family!r}; known families: {families()}")
        name = family
    else:
        index = int(family)
        if index != family or not 0 <= index < len(taxonomy.FAMILY_NAMES):
            raise KeyError(f"family index must be in 0..{len(taxonomy.FAMILY_NAMES) - 1}, got {family!r}")
        name = taxonomy.FAMILY_NAMES[index]
    return [m for m in REGISTRY if m.family == name]


def sample_leaf(rng: np.random.Generator) -> int:
    """A leaf id drawn uniformly over all leaves."""
    return int(rng.integers(NUM_LEAVES))


def _check_leaf(leaf) -> int:
    if isinstance(leaf, (bool, np.bool_)) or not isinstance(leaf, (int, np.integer)):
        raise TypeError(f"leaf must be an integer id in 0..{NUM_LEAVES - 1} or a label, got {leaf!r}")
    if not 0 <= leaf < NUM_LEAVES:
        raise ValueError(f"leaf id {leaf} outside 0..{NUM_LEAVES - 1}")
    return int(leaf)


def check_image(image) -> np.ndarray:
    """Returns `image` as a C-contiguous array after checking it is a uint8 RGB image >= 8x8."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy uint8 H x W x 3 image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {image.shape}")
    if image.shape[0] < MIN_SIZE or image.shape[1] < MIN_SIZE:
        raise ValueError(f"expected an image of at least {MIN_SIZE}x{MIN_SIZE} pixels, got shape {image.shape}")
    return np.ascontiguousarray(image)


def apply(leaf: int, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Applies leaf `leaf` to a uint8 H x W x 3 RGB image; returns a new image of the same shape."""
    manipulation = REGISTRY[_check_leaf(leaf)]
    try:
        image = check_image(image)
    except ValueError as error:
        raise ValueError(f"apply(leaf={leaf}, {manipulation.label}): {error}") from None
    return manipulation.fn(image, rng)
