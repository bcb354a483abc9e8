"""Imports the authors' released Keras weights (ManTraNet_Ptrain{0..4}.h5) into a mantra_jax checkpoint.

    python -m experiments.convert --h5 ManTraNet_Ptrain4.h5 --out DIR [--variant Ptrain4] [--force]

The file is read with h5py (no Keras, no TensorFlow). Both layouts Keras 2.2 writes are accepted:
`save_weights` (one group per layer at the root, listed by the root attribute `layer_names`) and a
full-model `save` (the same under `model_weights/`, with the architecture as the root attribute
`model_config`). Each layer group lists its arrays in the attribute `weight_names` as
"scope/name:0" paths; the nested Featex model lists "[Featex/]b1c1/regular_kernel:0" and so on.
Scope suffixes that Keras adds when a name is reused ("cLSTM_3", "b1c1_1") are ignored.

Which release a file holds: the weights tell Ptrain0/1 (20 regular first-layer filters, 32 channels)
from Ptrain2/3/4 (4 regular filters, 16 channels), but not the rest, because the transform's tanh
(Ptrain0 only) and the extra 63x63 window (Ptrain0-3) have no weights. The variant is therefore
taken, in this order of precedence, from
  1. `variant=` / `--variant` (checked against the shapes; a disagreement with `model_config` is
     reported as a warning and the explicit choice wins);
  2. the `model_config` attribute when the file has one (the transform's activation and the
     anomaly windows);
  3. the file name, when it names a release the shapes allow (e.g. "ManTraNet_Ptrain2.h5");
  4. a default with a warning: Ptrain4 for 16-channel files (the model the authors' demo loads) and
     Ptrain1 for 32-channel files (the one whose transform is linear like every other release).

The converted first-layer Bayar kernel is kept exactly as stored: the released weights already
satisfy the constraint (re-projecting would only add rounding). The 9 SRM filters are constants of
the network (mantra_jax.nn.layers.srm_kernels), not stored in the file, and not looked for.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from mantra_jax.errors import UserError
from mantra_jax.nn import config as config_lib
from mantra_jax.nn import model as model_lib

VARIANTS = ("Ptrain0", "Ptrain1", "Ptrain2", "Ptrain3", "Ptrain4")
# Used when nothing but the shapes speaks (see the module docstring).
DEFAULT_BY_FIRST_WIDTH = {16: "Ptrain4", 32: "Ptrain1"}
# Ptrain2 and Ptrain3 share one architecture: when the evidence cannot separate them, this one names it.
PREFERRED_ORDER = ("Ptrain4", "Ptrain3", "Ptrain2", "Ptrain1", "Ptrain0")

_SCOPE_SUFFIX = re.compile(r"(_\d+)+$")
_VARIABLE_INDEX = re.compile(r":\d+$")
_VARIANT_IN_NAME = re.compile(r"ptrain([0-4])(?!\d)", re.IGNORECASE)


class ConversionError(UserError, ValueError):
    """A file that cannot be converted; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class KerasWeights:
    """The arrays of a ManTra-Net Keras file, keyed like the mantra_jax pytree without its first
    level: "Featex/b1c1/regular_kernel", "outlierTrans/kernel", "bnorm/moving_mean", ..."""

    path: str
    arrays: dict
    model_config: Optional[dict]  # the parsed root attribute `model_config`, when present
    sources: dict = dataclasses.field(default_factory=dict)  # key -> dataset path in the file


@dataclasses.dataclass(frozen=True)
class Recognition:
    variant: str
    reason: str  # how it was decided, in words
    warnings: tuple = ()


# --------------------------------------------------------------------------------------------
# Reading the HDF5 file
# --------------------------------------------------------------------------------------------
def strip_scope_suffix(name: str) -> str:
    """'cLSTM_3' -> 'cLSTM', 'b1c1_1' -> 'b1c1' (Keras appends _N when a name is taken)."""
    return _SCOPE_SUFFIX.sub("", name)


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _string_list_attribute(group, name: str) -> Optional[list]:
    """A list-of-strings attribute as Keras writes it: whole, or split into name0, name1, ... when
    it exceeds the HDF5 object-header limit. None when absent."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    elif f"{name}0" in group.attrs:
        chunks, i = [], 0
        while f"{name}{i}" in group.attrs:
            chunks.append(group.attrs[f"{name}{i}"])
            i += 1
    else:
        return None
    return [_text(v) for chunk in chunks for v in np.atleast_1d(np.asarray(chunk)).ravel()]


def _datasets_under(group) -> list:
    """Relative paths of every dataset below `group` (for files without `weight_names`)."""
    import h5py

    found = []
    group.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(found)


def _pytree_key(layer: str, weight_path: str, where: str) -> str:
    """Maps a Keras layer name and weight path to the pytree key used here.

    Featex is a nested model: its weight paths end in "<conv layer>/<weight>:0"; every other layer
    holds its weights directly, so the weight's own name is enough.
    """
    parts = [p for p in weight_path.split("/") if p]
    if not parts:
        raise ConversionError(f"{where}: empty weight name in layer {layer!r}")
    weight = _VARIABLE_INDEX.sub("", parts[-1])
    if layer == "Featex":
        if len(parts) < 2:
            return f"Featex/?/{weight}"
        return f"Featex/{strip_scope_suffix(parts[-2])}/{weight}"
    return f"{layer}/{weight}"


def read_keras_weights(path) -> KerasWeights:
    """Every array of a Keras 2.2 weights or model file, under pytree-style keys (unknown layers
    are kept under their own names so that errors can list them)."""
    import h5py

    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ConversionError(f"{where}: no such file")
    try:
        handle = h5py.File(path, "r")
    except OSError as e:
        raise ConversionError(f"{where}: not a readable HDF5 file (truncated or another format): {e}") from e
    try:
        with handle as f:
            model_config = None
            if "model_config" in f.attrs:
                try:
                    model_config = json.loads(_text(f.attrs["model_config"]))
                except (ValueError, TypeError) as e:
                    raise ConversionError(f"{where}: the root attribute model_config is not JSON: {e}") from e
            root = f["model_weights"] if isinstance(f.get("model_weights"), h5py.Group) else f
            layer_names = _string_list_attribute(root, "layer_names")
            if layer_names is None:
                layer_names = [k for k in root.keys() if isinstance(root[k], h5py.Group)]
            arrays, sources = {}, {}
            for stored_name in layer_names:
                if stored_name not in root:
                    raise ConversionError(
                        f"{where}: layer_names lists {stored_name!r} but the file has no such group")
                group = root[stored_name]
                layer = strip_scope_suffix(stored_name)
                weight_paths = _string_list_attribute(group, "weight_names")
                if weight_paths is None:
                    weight_paths = _datasets_under(group)
                for weight_path in weight_paths:
                    if weight_path not in group:
                        raise ConversionError(
                            f"{where}: {stored_name}/weight_names lists {weight_path!r} but the dataset "
                            f"{group.name.lstrip('/')}/{weight_path} is missing")
                    key = _pytree_key(layer, weight_path, where)
                    if key in arrays:
                        raise ConversionError(f"{where}: {sources[key]} and {stored_name}/{weight_path} "
                                              f"are both {key}")
                    arrays[key] = np.array(group[weight_path])
                    sources[key] = f"{group.name.lstrip('/')}/{weight_path}"
    except ConversionError:
        raise
    except (OSError, KeyError, RuntimeError) as e:  # h5py reports truncated data this way
        raise ConversionError(f"{where}: unreadable HDF5 content (truncated file?): {e}") from e
    return KerasWeights(path=where, arrays=arrays, model_config=model_config, sources=sources)


# --------------------------------------------------------------------------------------------
# Which release
# --------------------------------------------------------------------------------------------
def expected_layout(cfg: config_lib.ModelConfig) -> dict:
    """{pytree key: shape} of the arrays a file for `cfg` holds (SRM excluded: it is a constant)."""
    return dict(_expected_layout_items(cfg))


@functools.lru_cache(maxsize=16)
def _expected_layout_items(cfg: config_lib.ModelConfig) -> tuple:
    shapes = jax.eval_shape(lambda: model_lib.init(jax.random.key(0), cfg))
    return tuple(("/".join(str(p.key) for p in path[1:]), tuple(leaf.shape))
                 for path, leaf in jax.tree_util.tree_leaves_with_path(shapes))


def _fits(stored_shape, expected_shape) -> bool:
    """Equal shapes, or equal up to unit axes (Keras keeps glbStd's min_std as (1, 1, 1, 64))."""
    stored, expected = tuple(stored_shape), tuple(expected_shape)
    if stored == expected:
        return True
    squeeze = lambda s: tuple(d for d in s if d != 1)
    return int(np.prod(stored)) == int(np.prod(expected)) and squeeze(stored) == squeeze(expected)


def layout_problems(arrays: dict, cfg: config_lib.ModelConfig) -> list:
    """Missing datasets and wrong shapes of `arrays` against `cfg`, as lines of text."""
    problems = []
    for key, shape in expected_layout(cfg).items():
        if key not in arrays:
            problems.append(f"missing {_keras_path(key)} {shape}")
        elif not _fits(arrays[key].shape, shape):
            problems.append(f"{_keras_path(key)}: expected shape {shape}, found {tuple(arrays[key].shape)}")
    return problems


def _keras_path(key: str) -> str:
    """How a key is spelled in the file (without scope suffixes): Featex/b1c1/regular_kernel:0."""
    return f"{key}:0"


def _first_width_of_file(arrays: dict) -> Optional[int]:
    regular = arrays.get("Featex/b1c1/regular_kernel")
    if regular is None or regular.ndim != 4:
        return None
    return int(regular.shape[-1]) + 9 + 3


def _search_config(node, found: dict):
    """Collects the transform's activation and the anomaly windows from a Keras model_config."""
    if isinstance(node, dict):
        cfg = node.get("config")
        if isinstance(cfg, dict) and strip_scope_suffix(str(cfg.get("name", ""))) == "transform" \
                and "activation" in cfg:
            found.setdefault("activation", str(cfg["activation"]))
        for key, value in node.items():
            if key in ("window_size_list", "pool_size_list") and isinstance(value, (list, tuple)):
                found.setdefault("windows", tuple(int(v) for v in value))
            _search_config(value, found)
    elif isinstance(node, list):
        for value in node:
            _search_config(value, found)


def variants_allowed_by_model_config(model_config: Optional[dict]) -> tuple[Optional[set], str]:
    """(variants consistent with the architecture the file records, what was read), or (None, "")
    when the file records nothing usable."""
    if not model_config:
        return None, ""
    found = {}
    _search_config(model_config, found)
    allowed = set(VARIANTS)
    said = []
    if "activation" in found:
        tanh = found["activation"] == "tanh"
        allowed &= {v for v in VARIANTS if (config_lib.released(v).transform_activation == "tanh") == tanh}
        said.append(f"transform activation {found['activation']}")
    if "windows" in found:
        allowed &= {v for v in VARIANTS if config_lib.released(v).windows == found["windows"]}
        said.append(f"windows {list(found['windows'])}")
    if not said:
        return None, ""
    return allowed, ", ".join(said)


def _pick(candidates) -> str:
    return next(v for v in PREFERRED_ORDER if v in candidates)


def recognise_variant(weights: KerasWeights, requested: Optional[str] = None) -> Recognition:
    """Decides which release `weights` holds (see the module docstring for the precedence).

    Raises ConversionError, listing what is missing or misshapen, when no release fits the arrays.
    """
    if requested is not None and requested not in VARIANTS:
        raise ConversionError(f"unknown variant {requested!r}; expected one of {VARIANTS}")
    fitting = [v for v in VARIANTS if not layout_problems(weights.arrays, config_lib.released(v))]
    if not fitting:
        width = _first_width_of_file(weights.arrays)
        closest = DEFAULT_BY_FIRST_WIDTH.get(width, "Ptrain4")
        problems = layout_problems(weights.arrays, config_lib.released(closest))
        known = set(expected_layout(config_lib.released(closest)))
        unexpected = sorted(weights.sources.get(k, k) for k in weights.arrays if k not in known)
        lines = [f"{weights.path}: not a ManTra-Net release file; compared with {closest} "
                 "(layer/weight names, scope suffixes ignored):"]
        lines += [f"  {p}" for p in problems[:40]]
        if len(problems) > 40:
            lines.append(f"  ... and {len(problems) - 40} more")
        if unexpected:
            lines.append(f"  the file holds instead: {', '.join(unexpected[:12])}"
                         + (" ..." if len(unexpected) > 12 else ""))
        raise ConversionError("\n".join(lines))

    width = config_lib.released(fitting[0]).first_width
    family = f"{width}-channel first layer ({'/'.join(fitting)})"
    by_config, config_said = variants_allowed_by_model_config(weights.model_config)
    warnings = []

    if requested is not None:
        if requested not in fitting:
            raise ConversionError(
                f"{weights.path}: --variant {requested} does not fit the file, whose shapes say "
                f"{family}")
        if by_config is not None and requested not in by_config:
            warnings.append(f"the file's model_config ({config_said}) suggests "
                            f"{'/'.join(sorted(by_config)) or 'no release'}, but {requested} was "
                            f"requested; converting as {requested}")
        return Recognition(requested, "requested", tuple(warnings))

    candidates, reason = list(fitting), family
    if by_config is not None:
        narrowed = [v for v in candidates if v in by_config]
        if narrowed:
            candidates, reason = narrowed, f"{family} and model_config ({config_said})"
        else:
            warnings.append(f"the file's model_config ({config_said}) fits none of {'/'.join(fitting)}; "
                            "ignoring it")

    named = [f"Ptrain{d}" for d in _VARIANT_IN_NAME.findall(Path(weights.path).name)]
    usable = [v for v in named if v in candidates]
    if named and not usable:
        warnings.append(f"the file name says {named[-1]}, but the file fits {'/'.join(candidates)}; "
                        "ignoring the name")
    if len(candidates) > 1 and usable:
        return Recognition(usable[-1], f"{reason} and the file name", tuple(warnings))

    configs = {config_lib.released(v) for v in candidates}
    if len(configs) == 1:  # e.g. Ptrain2 and Ptrain3: one architecture under two names
        chosen = _pick(candidates)
        return Recognition(chosen, reason, tuple(warnings))

    chosen = DEFAULT_BY_FIRST_WIDTH[width] if DEFAULT_BY_FIRST_WIDTH.get(width) in candidates else _pick(candidates)
    others = [v for v in candidates if config_lib.released(v) != config_lib.released(chosen)]
    why = {
        16: "16-channel weights do not show whether the anomaly windows are (7, 15, 31) (Ptrain4) or "
            "(7, 15, 31, 63) (Ptrain2/3)",
        32: "32-channel weights do not show whether the transform has a tanh (Ptrain0) or not (Ptrain1)",
    }.get(width, "the weights do not separate the candidates")
    recorded = "records no usable model_config" if by_config is None else "model_config does not settle it"
    warnings.append(f"{why}, and the file {recorded}: assuming {chosen}; pass "
                    f"--variant {'/'.join(others)} if the file is another release")
    return Recognition(chosen, f"{reason}, default", tuple(warnings))


# --------------------------------------------------------------------------------------------
# Building the variables
# --------------------------------------------------------------------------------------------
def to_variables(weights: KerasWeights, cfg: config_lib.ModelConfig) -> dict:
    """The mantra_jax variables pytree for `cfg`, every array float32 and otherwise as stored."""
    problems = layout_problems(weights.arrays, cfg)
    if problems:
        raise ConversionError(f"{weights.path}: does not fit the configuration:\n  " + "\n  ".join(problems))
    shapes = jax.eval_shape(lambda: model_lib.init(jax.random.key(0), cfg))

    def take(path, leaf):
        key = "/".join(str(p.key) for p in path[1:])
        return np.asarray(weights.arrays[key], np.float32).reshape(leaf.shape)

    variables = jax.tree_util.tree_map_with_path(take, shapes)
    model_lib.check_variables(variables, cfg, what=f"weights converted from {weights.path}")
    return variables


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert(h5_path, out_dir, *, variant: Optional[str] = None, force: bool = False):
    """Reads `h5_path`, recognises the release and writes a checkpoint to `out_dir` that
    mantra_jax.checkpoint.load_model reads. Returns (Recognition, ModelConfig, variables)."""
    from mantra_jax import checkpoint  # Orbax is only needed for writing

    out_dir = Path(out_dir)
    existing = [out_dir / checkpoint.CONFIG_FILE, out_dir / checkpoint.STEPS_DIR]
    if any(p.exists() for p in existing) and not force:
        raise ConversionError(f"{out_dir}: already holds a checkpoint; pass --force to replace it")
    weights = read_keras_weights(h5_path)
    recognition = recognise_variant(weights, requested=variant)
    cfg = config_lib.released(recognition.variant)
    variables = to_variables(weights, cfg)
    if force:
        for p in existing:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    meta = {
        "converted_from": str(Path(h5_path).absolute()),
        "source_sha256": _sha256(h5_path),
        "variant": recognition.variant,
        "recognised_by": recognition.reason,
        "warnings": list(recognition.warnings),
    }
    checkpoint.save_model(out_dir, cfg, variables, meta)
    return recognition, cfg, variables
