"""Forgery heat maps that need no training, scored beside the learned models.

`noise_inconsistency` is the classic blind noise-level map: a region pasted from elsewhere, or
re-rendered by resampling, inpainting or filtering, usually carries a local noise level unlike
the rest of the photo. The map is computed in numpy/OpenCV only:

1. the noise residual of the luma, ``r = Y - median3x3(Y)`` (a median keeps edges, so content
   edges leave little residual, unlike a linear high-pass);
2. the local noise level ``s = sqrt(box_w(r^2))`` over ``window`` x ``window`` neighbourhoods;
3. how far each pixel's level lies from the image's typical one, in robust units:
   ``z = |log s - median(log s)| / (1.4826 MAD(log s))``;
4. the score ``z / (1 + z)`` in [0, 1): 0 at the typical level, 0.5 at one robust standard
   deviation away.

Every step is monotone or local, so its AUC does not depend on step 4; F1 at 0.5 does, and is
reported for it like for the models. It is a baseline, not a method: it does not know which
side of the inconsistency is forged (a forged region that covers most of the photo looks like
the genuine one).
"""
from __future__ import annotations

import cv2
import numpy as np

BASELINES = ("noise_inconsistency",)


def noise_inconsistency(rgb_HxWx3: np.ndarray, *, window: int = 16) -> np.ndarray:
    """float32 H x W scores in [0, 1) of uint8 RGB: higher = noise level less typical of the image."""
    rgb = np.asarray(rgb_HxWx3)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"noise_inconsistency: expected uint8 H x W x 3, got {rgb.dtype} {rgb.shape}")
    if window < 1:
        raise ValueError(f"noise_inconsistency: window must be >= 1, got {window}")
    luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    residual = luma.astype(np.float32) - cv2.medianBlur(luma, 3).astype(np.float32)
    energy = cv2.boxFilter(residual * residual, -1, (window, window), borderType=cv2.BORDER_REFLECT)
    log_level = 0.5 * np.log(np.maximum(energy, 1e-6))
    centre = np.median(log_level)
    spread = 1.4826 * np.median(np.abs(log_level - centre))
    z = np.abs(log_level - centre) / max(float(spread), 1e-6)
    return (z / (1.0 + z)).astype(np.float32)


def get(name: str):
    """The baseline function of that name (uint8 RGB -> float32 map in [0, 1])."""
    if name == "noise_inconsistency":
        return noise_inconsistency
    raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")
