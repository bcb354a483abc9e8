"""Reference outputs of a model on a bundled photo: what a shipped checkpoint must still compute.

`outputs(cfg, variables)` runs the network on `reference_image()` (a fixed 128 x 128 crop of
scikit-image's public-domain astronaut photo, which every install has) and returns a small,
JSON-able summary: for a localisation model the probability map's mean, spread and a 4 x 4 grid
of its values; for an IMC model the top-5 classes of the spatially averaged prediction at its
trained level with their probabilities. A test compares a shipped checkpoint's outputs with
the ones stored beside it, so a change of the network code that changes what the model computes
is caught.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mantra_jax.data import bundled, images
from mantra_jax.nn import model as model_lib
from mantra_jax.nn import tiled
from mantra_jax.nn.config import ModelConfig

REFERENCE_PHOTO = "data/astronaut.png"
CROP = (slice(96, 224), slice(160, 288))  # the face and the flag patch: texture, edges and flat areas
GRID = 4


def reference_image() -> np.ndarray:
    """uint8 128 x 128 x 3: the reference crop of the bundled astronaut photo."""
    for path, _ in bundled.bundled_photo_files():
        if path.as_posix().endswith(REFERENCE_PHOTO):
            return np.ascontiguousarray(images.read_rgb(path)[CROP])
    raise FileNotFoundError(f"scikit-image's {REFERENCE_PHOTO} is not installed (pip install scikit-image)")


def outputs(cfg: ModelConfig, variables: dict) -> dict:
    rgb = reference_image()
    if cfg.head == "imc":
        x = model_lib.preprocess(jnp.asarray(rgb)[None])
        logits = model_lib.apply(variables, x, cfg, pooled=True)["logits"][0]
        prob = np.asarray(jax.nn.softmax(logits), np.float64)
        top = np.argsort(-prob, kind="stable")[:5]
        return {"kind": "imc", "num_classes": int(cfg.num_classes), "top5_classes": [int(c) for c in top],
                "top5_probabilities": [float(prob[c]) for c in top]}
    prob = np.asarray(tiled.whole_image_probabilities(variables, rgb, cfg), np.float64)
    step = prob.shape[0] // GRID
    grid = prob[step // 2::step, step // 2::step][:GRID, :GRID]
    return {"kind": "localisation", "shape": list(prob.shape), "mean": float(prob.mean()),
            "std": float(prob.std()), "grid": grid.round(8).tolist()}
