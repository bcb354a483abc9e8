"""ManTra-Net outside Python: serialized StableHLO (jax.export) and ONNX (jax2onnx), each checked
against `Predictor.predict`.

    python -m experiments.export --checkpoint DIR --out OUTDIR

From Python:

    report = export_checkpoint("weights/ptrain4", "exported/")   # model.stablehlo, model.onnx, export_check.json
    run = load_stablehlo("exported/model.stablehlo")            # no model code needed to run it
    prob_NxHxW = run(rgb_uint8_NxHxWx3)

Both files compute the whole-image probability map of `tiled.whole_image_map` for a batch:
uint8 RGB N x H x W x 3 in, float32 probabilities N x H x W out, with the pre-processing
(x / 255 * 2 - 1) and the sigmoid inside the graph, for any N, H and W of at least
`min_side(cfg)` pixels (the released model: 16). Below that the network code takes other branches
(the padded path of the Featex convolutions, windows larger than the image) that one symbolic
program cannot hold; such images are better upscaled anyway. The computation is float32 (an
ONNX runtime's bfloat16 support is patchy). The tiled pass is not exported: larger images are split by
the caller (see README "Export").

StableHLO: `jax.export` with symbolic N, H, W (constraints H, W >= min_side), serialized with
`Exported.serialize()`; `jax.export.deserialize` gives back a callable on any platform it was
exported for (CPU by default, see `platforms`).

ONNX: jax2onnx converts a jaxpr of the same function. jax2onnx 0.17 mishandles a few things on
symbolic shapes, which `portable_jaxpr` rewrites away exactly before conversion (the network
code stays as it is): lax.pad becomes a concatenation with the padding value, iota a cumulative
sum of ones (integers, exact), and zero-sized intermediates (jnp.pad's "edge" mode makes some)
are dropped from the concatenations they feed, since ONNX Reshape reads a 0 in a shape as
"keep this dimension". It is traced outside jax2onnx (whose tracing replaces jax.numpy
functions, a few of them with wrong symbolic shapes), so the converter sees lax primitives only.

Every export is checked: the deserialized StableHLO and the ONNX model under onnxruntime against
`Predictor.predict` on random images of odd sizes (`check_sizes`), in batches of two; the
largest absolute difference of the probabilities goes to export_check.json and must stay below
`tolerance` (1e-4), else `ExportCheckFailed`.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from mantra_jax.errors import UserError
from mantra_jax.nn import config as config_lib
from mantra_jax.nn import model
from mantra_jax.nn.config import ModelConfig

ONNX_FILE = "model.onnx"
STABLEHLO_FILE = "model.stablehlo"
CHECK_FILE = "export_check.json"
DEFAULT_OPSET = 23
DEFAULT_TOLERANCE = 1e-4
EXPORT_INSTALL = "pip install -r requirements-export.txt"
PREPROCESSING = "input: uint8 RGB, N x H x W x 3; inside the graph x / 255 * 2 - 1 (float32)"
OUTPUT = "prob: float32 N x H x W, forgery probability per pixel (sigmoid inside the graph)"


class ExportDependencyError(UserError, ImportError):
    """An optional export dependency is missing; the message says what to install."""


class ExportCheckFailed(RuntimeError):
    """An exported model computes other probabilities than the JAX model."""


def min_side(cfg: ModelConfig) -> int:
    """The smallest height and width the exported programs take: four times the largest Featex
    padding radius (smaller images take the padded path of layers.symmetric_conv) and half the
    largest window plus one (smaller images clip every window of layers._window_means)."""
    featex_radius = max(cfg.first_kernel // 2, 1)
    windows = cfg.windows if cfg.anomaly != "zf" else ()
    return int(max(4 * featex_radius, max((w // 2 + 1 for w in windows), default=1)))


def check_sizes(cfg: ModelConfig) -> tuple[tuple[int, int], ...]:
    """Odd (height, width) pairs around min_side: a narrow, a tall and a larger image."""
    m = min_side(cfg)
    return (m + 1, 2 * m + 3), (2 * m + 5, m + 3), (3 * m + 1, 3 * m + 7)


def probability_map(variables, rgb_NxHxWx3, cfg: ModelConfig):
    """uint8 RGB N x H x W x 3 -> float32 probabilities N x H x W: the batched function exported
    (`tiled.whole_image_map` for a batch, float32)."""
    logits = model.apply(variables, model.preprocess(rgb_NxHxWx3), cfg)["logits"]
    return jax.nn.sigmoid(logits)


def input_spec(cfg: ModelConfig) -> jax.ShapeDtypeStruct:
    """uint8 (N, H, W, 3) with symbolic N, H, W and H, W >= min_side."""
    m = min_side(cfg)
    n, h, w = jax.export.symbolic_shape("N, H, W", constraints=(f"H >= {m}", f"W >= {m}"))
    return jax.ShapeDtypeStruct((n, h, w, 3), jnp.uint8)


def _check_cfg(cfg: ModelConfig):
    from mantra_jax import checkpoint as checkpoint_lib

    if cfg.head != "ladn":
        raise checkpoint_lib.CheckpointError(
            f"export needs an end-to-end ManTra-Net checkpoint (head 'ladn'); this one has the {cfg.head!r} "
            "head (an IMC classifier gives class maps, not forgery probabilities)"
        )


def _closed_over(variables, cfg):
    variables = jax.tree.map(jnp.asarray, variables)
    return lambda rgb: probability_map(variables, rgb, cfg)


# --------------------------------------------------------------------------------------------
# StableHLO
# --------------------------------------------------------------------------------------------
def export_stablehlo(variables, cfg: ModelConfig, *, platforms: Optional[Sequence[str]] = None) -> bytes:
    """The serialized `jax.export.Exported` of `probability_map` with the weights inside."""
    _check_cfg(cfg)
    exported = jax.export.export(jax.jit(_closed_over(variables, cfg)), platforms=platforms)(input_spec(cfg))
    return bytes(exported.serialize())


def load_stablehlo(path) -> Callable[[np.ndarray], np.ndarray]:
    """A function uint8 N x H x W x 3 -> float32 N x H x W from a model.stablehlo (no model code)."""
    exported = jax.export.deserialize(bytearray(Path(path).read_bytes()))
    call = jax.jit(exported.call)
    return lambda rgb: np.asarray(call(np.asarray(rgb, np.uint8)))


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------
def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExportDependencyError(
            f"ONNX export needs the optional packages jax2onnx, onnx and onnxruntime ({module} is missing: {e}); "
            f"install them with: {EXPORT_INSTALL}"
        ) from e


_EMPTY = object()  # a zero-sized intermediate, dropped by portable_jaxpr


def _is_empty(aval) -> bool:
    return any(isinstance(d, int) and d == 0 for d in getattr(aval, "shape", ()))


def _pad_by_concatenation(x, value, padding_config):
    if any(lo < 0 or hi < 0 or interior for lo, hi, interior in padding_config):
        return jax.lax.pad(x, value, padding_config)
    for axis, (lo, hi, _) in enumerate(padding_config):
        def block(size):
            return jax.lax.broadcast_in_dim(value, x.shape[:axis] + (int(size),) + x.shape[axis + 1:], ())

        parts = ([block(lo)] if lo else []) + [x] + ([block(hi)] if hi else [])
        if len(parts) > 1:
            x = jax.lax.concatenate(parts, axis)
    return x


def _iota_by_cumsum(dtype, shape, dimension, sharding=None):
    del sharding
    return jax.lax.cumsum(jax.lax.full(shape, 1, dtype), axis=dimension) - jnp.asarray(1, dtype)


def _evaluate_portably(jaxpr, consts, *args):
    """Evaluates a jaxpr, inlining nested jits and custom-derivative calls (inference needs no
    derivative rule), with pad and iota rewritten and zero-sized values dropped."""
    env = {}

    def read(v):
        return v.val if isinstance(v, jex.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if any(_is_empty(v.aval) for v in eqn.outvars):
            if len(eqn.outvars) != 1:
                raise NotImplementedError(f"zero-sized results of {name}")
            env[eqn.outvars[0]] = _EMPTY
            continue
        invals = [read(v) for v in eqn.invars]
        if name == "concatenate":
            kept = [x for x in invals if x is not _EMPTY]
            outs = [kept[0] if len(kept) == 1 else jax.lax.concatenate(kept, eqn.params["dimension"])]
        elif any(x is _EMPTY for x in invals):
            raise NotImplementedError(f"a zero-sized operand of {name} with a non-empty result")
        elif name == "jit":
            sub = eqn.params["jaxpr"]
            outs = _evaluate_portably(sub.jaxpr, sub.consts, *invals)
        elif name in ("custom_vjp_call", "custom_jvp_call"):
            sub = eqn.params["call_jaxpr"]
            outs = _evaluate_portably(sub.jaxpr, sub.consts, *invals)
        elif name == "pad":
            outs = [_pad_by_concatenation(*invals, eqn.params["padding_config"])]
        elif name == "iota":
            outs = [_iota_by_cumsum(**eqn.params)]
        else:
            outs = eqn.primitive.bind(*invals, **eqn.params)
            if not eqn.primitive.multiple_results:
                outs = [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def portable_jaxpr(fn, spec: jax.ShapeDtypeStruct):
    """The closed jaxpr of `fn` at `spec`, flattened and rewritten for the ONNX converter (the
    same values: only padding, index ramps and empty arrays are written differently)."""
    closed = jax.make_jaxpr(fn)(spec)
    return jax.make_jaxpr(lambda x: _evaluate_portably(closed.jaxpr, closed.consts, x)[0])(spec)


def onnx_metadata(cfg: ModelConfig, opset: int, extra: Optional[dict] = None) -> dict:
    """The key/value metadata stored in model.onnx."""
    meta = {
        "preprocessing": PREPROCESSING,
        "output": OUTPUT,
        "dynamic_axes": "input: N, H, W; prob: N, H, W",
        "min_height_width": str(min_side(cfg)),
        "opset": str(opset),
        "model_config": json.dumps(config_lib.to_dict(cfg), sort_keys=True),
        "large_images": "the whole image is one pass (memory grows with it): split larger images into "
                        "overlapping crops or downscale them, see the mantra_jax README",
    }
    meta.update(extra or {})
    return meta


def export_onnx(variables, cfg: ModelConfig, *, opset: int = DEFAULT_OPSET, metadata: Optional[dict] = None) -> bytes:
    """The serialized ONNX model: input `input` (uint8 N x H x W x 3), output `prob` (float32
    N x H x W), dynamic N, H, W; raises ExportDependencyError when jax2onnx or onnx is missing."""
    _check_cfg(cfg)
    jax2onnx = _require("jax2onnx")
    _require("onnx")
    spec = input_spec(cfg)
    portable = portable_jaxpr(_closed_over(variables, cfg), spec)
    proto = jax2onnx.to_onnx(jex.jaxpr_as_fun(portable), inputs=[spec], model_name="mantranet", opset=opset,
                             input_names=["input"], output_names=["prob"])
    proto.doc_string = "ManTra-Net forgery localisation (mantra_jax). " + PREPROCESSING + "; " + OUTPUT
    meta = onnx_metadata(cfg, opset, dict(metadata or {}, converter=f"jax2onnx {package_version('jax2onnx')}"))
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    return proto.SerializeToString()


def load_onnx(path, *, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A function uint8 N x H x W x 3 -> float32 N x H x W running model.onnx under onnxruntime
    (`threads` intra-op threads, 0: its default)."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # no warning per unused initializer
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda rgb: session.run(["prob"], {"input": np.asarray(rgb, np.uint8)})[0]


def package_version(package: str) -> str:
    """The installed version of `package`, "unknown" when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------
def check_images(cfg: ModelConfig, seed: int = 0, batch: int = 2) -> list[np.ndarray]:
    """Random uint8 batches (batch x H x W x 3), one per `check_sizes` entry."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8) for h, w in check_sizes(cfg)]


def max_abs_diff(run: Callable[[np.ndarray], np.ndarray], reference: Callable[[np.ndarray], np.ndarray],
                 batches: Sequence[np.ndarray]) -> float:
    """The largest |run(batch) - reference(image)| over every pixel of every image; infinity
    where either side is not finite (a NaN would otherwise compare as no difference)."""
    worst = 0.0
    for images in batches:
        got = np.asarray(run(images))
        if got.shape != images.shape[:3] or got.dtype != np.float32:
            raise ExportCheckFailed(f"the exported model returned {got.dtype} {got.shape} for a batch {images.shape}")
        for image, prob in zip(images, got):
            diff = np.abs(prob.astype(np.float64) - np.asarray(reference(image), np.float64))
            worst = max(worst, float(np.max(np.where(np.isfinite(diff), diff, np.inf))))
    return worst


def _json_number(x: float):
    return x if np.isfinite(x) else None  # JSON has no infinity: null means "not finite"


def export_checkpoint(checkpoint, out, *, formats: Sequence[str] = ("stablehlo", "onnx"),
                      opset: int = DEFAULT_OPSET, tolerance: float = DEFAULT_TOLERANCE,
                      step: Optional[int] = None, log: Callable[[str], None] = lambda text: None) -> dict:
    """Exports an end-to-end checkpoint to OUT/model.stablehlo and OUT/model.onnx, checks each
    against Predictor.predict and writes OUT/export_check.json (returned); raises
    ExportCheckFailed (after writing the report) when a difference reaches `tolerance`."""
    from mantra_jax import checkpoint as checkpoint_lib
    from mantra_jax.infer.predict import Predictor  # Orbax and the CLI helpers only here

    unknown = set(formats) - {"stablehlo", "onnx"}
    if unknown or not formats:
        raise ValueError(f"formats must be among 'stablehlo' and 'onnx', got {list(formats)}")
    cfg = checkpoint_lib.read_model_config(checkpoint)
    _check_cfg(cfg)  # before the weights are read
    if "onnx" in formats:  # a missing dependency fails before any work
        for module in ("jax2onnx", "onnx", "onnxruntime"):
            _require(module)
    predictor = Predictor.from_checkpoint(checkpoint, step=step)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    batches = check_images(cfg)
    report = {
        "checkpoint": str(checkpoint),
        "input": PREPROCESSING,
        "output": OUTPUT,
        "min_height_width": min_side(cfg),
        "check_sizes": [list(s) for s in check_sizes(cfg)],
        "check_batch": int(batches[0].shape[0]),
        "tolerance": tolerance,
        "versions": {p: package_version(p) for p in ("jax", "jaxlib", "jax2onnx", "onnx", "onnxruntime")},
        "machine": platform.platform(),
    }
    failures = []
    if "stablehlo" in formats:
        start = time.perf_counter()
        (out / STABLEHLO_FILE).write_bytes(export_stablehlo(predictor.variables, cfg))
        report["stablehlo_export_s"] = round(time.perf_counter() - start, 2)
        log(f"wrote {out / STABLEHLO_FILE} in {report['stablehlo_export_s']} s; checking it")
        diff = max_abs_diff(load_stablehlo(out / STABLEHLO_FILE), predictor.predict, batches)
        report["max_abs_diff_stablehlo"] = _json_number(diff)
        if not diff < tolerance:
            failures.append(f"StableHLO differs from Predictor.predict by {diff:.3g}")
    if "onnx" in formats:
        start = time.perf_counter()
        (out / ONNX_FILE).write_bytes(export_onnx(predictor.variables, cfg, opset=opset,
                                                  metadata={"checkpoint": str(checkpoint)}))
        report["onnx_export_s"] = round(time.perf_counter() - start, 2)
        report["onnx_opset"] = opset
        log(f"wrote {out / ONNX_FILE} in {report['onnx_export_s']} s; checking it with onnxruntime")
        diff = max_abs_diff(load_onnx(out / ONNX_FILE), predictor.predict, batches)
        report["max_abs_diff_onnx"] = _json_number(diff)
        if not diff < tolerance:
            failures.append(f"ONNX differs from Predictor.predict by {diff:.3g}")
    report["passed"] = not failures
    (out / CHECK_FILE).write_text(json.dumps(report, indent=2) + "\n")
    if failures:
        raise ExportCheckFailed("; ".join(failures) + f" (tolerance {tolerance}; report in {out / CHECK_FILE})")
    return report
