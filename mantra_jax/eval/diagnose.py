"""What a forgery map follows: texture, objects, or the forgery itself.

- `texture_auc`: how well a map ranks textured over flat pixels (near 1: a texture detector).
- `region_aucs`: a map's AUC for each of COVERAGE's three regions (the pasted region "forged",
  its source "copy", the similar genuine object "paste") against the background, and for the
  pasted region against its source. A map that follows the copy's traces ranks the pasted region
  above both the background and the genuine look-alike; one that follows objects ranks the three
  alike.
- `CachedMaps`: a predict function whose maps are kept on disk, so that the same map is scored by
  every metric (and rescored later) without running the model again.
- `diagnose_maps`: the two, averaged over a benchmark's images, from cached maps.
"""
from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from mantra_jax.metrics import pixel as pixel_metrics


class CachedMaps:
    """A predict function that computes each image's map once and keeps it on disk (float32 .npy),
    named by a digest of the image's pixels; `predict_fn` None reads cached maps only."""

    def __init__(self, predict_fn: Callable[[np.ndarray], np.ndarray] | None, folder: Path):
        self.predict_fn, self.folder = predict_fn, Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, rgb: np.ndarray) -> Path:
        """Where the map of this image is kept: named by a digest of its pixels."""
        return self.folder / (hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()[:20] + ".npy")

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        path = self.path(rgb)
        if path.exists():
            return np.load(path, allow_pickle=False)
        if self.predict_fn is None:
            raise KeyError(f"no cached map for this image in {self.folder}")
        prob = np.asarray(self.predict_fn(rgb), np.float32)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, prob, allow_pickle=False)
        tmp.replace(path)  # a map is there whole or not at all
        return prob


def texture_auc(rgb: np.ndarray, prob: np.ndarray, window: int = 15) -> float | None:
    """How well a map ranks textured over flat pixels: the AUC of `prob` for the label "local luma
    std above the image's median". Near 1 for a texture detector, near 0.5 for a map blind to
    texture; read beside the forgery AUC, it says which of the two a model follows."""
    luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    mean = cv2.blur(luma, (window, window))
    local_std = np.sqrt(np.maximum(cv2.blur(luma * luma, (window, window)) - mean * mean, 0))
    textured = (local_std > np.median(local_std)).astype(np.uint8)
    step = 4  # every 4th pixel in each direction: the AUC of 1/16 of the pixels, enough here
    return pixel_metrics.roc_auc(prob[::step, ::step].ravel(), textured[::step, ::step].ravel())


def region_aucs(prob: np.ndarray, regions: dict, step: int = 3) -> dict:
    """AUC of `prob` for each named region of `regions` against the background (the pixels in no
    region), and of the first region against the second. COVERAGE has three: the pasted region
    ("forged"), its source ("copy") and the similar genuine object ("paste"). A model that tells a
    copy from genuine content ranks "forged" over the background and over "copy"; one that
    follows objects ranks all three over the background alike."""
    prob = prob[::step, ::step]
    regions = {k: v[::step, ::step].astype(bool) for k, v in regions.items()}
    background = ~np.logical_or.reduce(list(regions.values()))
    result = {}
    for name, region in regions.items():
        scores = np.concatenate([prob[region], prob[background]])
        labels = np.concatenate([np.ones(region.sum(), np.int8), np.zeros(background.sum(), np.int8)])
        result[f"{name}_vs_background"] = pixel_metrics.roc_auc(scores, labels)
    names = list(regions)
    for a, b in ((names[0], names[1]), (names[0], names[2])) if len(names) > 2 else ((names[0], names[1]),):
        only_a, only_b = regions[a] & ~regions[b], regions[b] & ~regions[a]
        scores = np.concatenate([prob[only_a], prob[only_b]])
        labels = np.concatenate([np.ones(only_a.sum(), np.int8), np.zeros(only_b.sum(), np.int8)])
        result[f"{a}_vs_{b}"] = pixel_metrics.roc_auc(scores, labels)
    return result


def coverage_regions(coverage: Path) -> dict[str, dict[str, Path]]:
    """Forged image name -> {"forged", "copy", "paste"} mask paths, from COVERAGE's pairs.csv (the
    fitted masks of mask_aligned/ for the pairs whose released masks do not fit)."""
    with open(Path(coverage) / "pairs.csv", newline="") as f:
        return {Path(row["forged"]).name: {k: Path(coverage) / row[f"mask_{k}"] for k in ("forged", "copy", "paste")}
                for row in csv.DictReader(f)}


def diagnose_maps(maps: CachedMaps, pairs: Sequence, regions: dict[str, dict[str, Path]]) -> dict:
    """Mean texture AUC and mean region AUCs of the cached maps of `pairs` (datasets.Pair) on
    COVERAGE; images without a cached map are left out (n_images counts those used)."""
    from mantra_jax.eval import datasets

    texture, per_region = [], []
    for pair in pairs:
        rgb = datasets.read_rgb(pair.image)
        path = maps.path(rgb)
        if not path.exists():
            continue
        prob = np.load(path, allow_pickle=False)
        texture.append(texture_auc(rgb, prob))
        masks = {k: datasets.read_mask(v, preset="coverage") for k, v in regions[pair.image.name].items()}
        if all(m.shape == prob.shape for m in masks.values()):
            per_region.append(region_aucs(prob, masks))
    texture = [v for v in texture if v is not None]
    result = {"texture_auc_mean": float(np.mean(texture)) if texture else None, "n_images": len(texture)}
    for key in (per_region[0] if per_region else {}):
        values = [r[key] for r in per_region if r[key] is not None]
        result[f"{key}_auc_mean"] = float(np.mean(values)) if values else None
    return result


def anomaly_network_health(cfg, variables: dict, batch: dict) -> dict:
    """Is a ManTra-Net's anomaly network still learning? On one batch ({"image": uint8 N x H x W x 3,
    "mask": N x H x W}): the spread of its logits (near 0: the same answer everywhere), the mean
    anomaly feature entering the ConvLSTM, the share of ConvLSTM gate inputs beyond the hard
    sigmoid's flat ends (|z| > 2.5, input part), and the global norms of the training loss's
    gradient reaching the ConvLSTM and the output layer (a ConvLSTM whose gradient is a tiny
    fraction of the output layer's has stopped learning)."""
    import jax
    import jax.numpy as jnp
    import optax

    from mantra_jax.nn import featex, ladn, layers
    from mantra_jax.nn import model as model_lib

    params, stats = variables["params"], variables["batch_stats"]
    x = model_lib.preprocess(batch["image"])
    mask = jnp.asarray(batch["mask"], jnp.float32)

    def loss(p):
        out = model_lib.apply({"params": p, "batch_stats": stats}, x, cfg, train=True)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(out["logits"], mask))

    grads = jax.grad(loss)(params)
    y, _ = ladn.adapt(params, stats, featex.apply(params["Featex"], x, cfg), cfg, train=False)
    mean, std = ladn.global_moments(y)
    z = ladn.anomaly_features(params, y, mean, std, cfg)
    n, t, h, w, c = z.shape
    xz = layers.conv(z.reshape(n * t, h, w, c), params["cLSTM"]["kernel"], params["cLSTM"]["bias"], padding="SAME")
    logits = model_lib.apply(variables, x, cfg)["logits"]
    return {"logit_std": float(jnp.std(logits)), "anomaly_feature_mean": float(jnp.mean(z)),
            "gate_inputs_beyond_2_5": float(jnp.mean(jnp.abs(xz) > 2.5)),
            "grad_norm_convlstm": float(optax.global_norm(grads["cLSTM"])),
            "grad_norm_output": float(optax.global_norm(grads["pred"]))}
