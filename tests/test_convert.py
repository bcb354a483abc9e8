"""The Keras-weights importer: round trips through files in the authors' layout, variant
recognition, and bad input.

The files are written here the way Keras 2.2's `save_weights` / `save` write them (root attribute
`layer_names`, per-layer attribute `weight_names` of "scope/name:0" paths, datasets at those paths,
the nested Featex model's weights one level deeper), independently of the reader under test.
"""
import functools
import json
import subprocess
import sys
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest

from mantra_jax import checkpoint
from mantra_jax.infer import convert
from mantra_jax.nn import config, model

ROOT = Path(__file__).resolve().parents[1]
LADN_LAYERS = ("outlierTrans", "bnorm", "glbStd", "cLSTM", "pred")


def random_variables(cfg, seed):
    """Random float32 variables of the released shapes. The Bayar and outlierTrans kernels are left
    unconstrained on purpose, so that a converter that re-projected them would be caught."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), cfg))

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "moving_variance" in name:
            return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
        if "min_std" in name:
            return rng.uniform(0.0, 0.05, leaf.shape).astype(np.float32)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 10
        return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def keras_model_config(cfg):
    """The parts of a Keras 2.2 `model_config` that tell the releases apart."""
    transform = {"class_name": "Conv2D", "name": "transform",
                 "config": {"name": "transform", "filters": 256, "kernel_size": [3, 3],
                            "activation": "tanh" if cfg.transform_activation == "tanh" else "linear"}}
    featex = {"class_name": "Model", "name": "Featex",
              "config": {"name": "Featex", "layers": [
                  {"class_name": "CombinedConv2D", "name": "b1c1", "config": {"name": "b1c1", "activation": "relu"}},
                  transform]}}
    windows = {"class_name": "NestedWindowAverageFeatExtractor", "name": "nestedAvgFeatex",
               "config": {"name": "nestedAvgFeatex", "window_size_list": list(cfg.windows),
                          "output_mode": "5d", "minus_original": True}}
    return {"class_name": "Model", "config": {"name": "sModel", "layers": [
        {"class_name": "InputLayer", "name": "img_in", "config": {"name": "img_in"}}, featex, windows]}}


def write_keras_file(path, variables, *, suffix="", featex_scope=True, full_model=False,
                     model_config=None, drop=(), split_names=False):
    """Writes `variables` in the layout of the released ManTraNet_Ptrain*.h5.

    suffix: appended to every layer name ("_1": "Featex_1", "b1c1_1", "cLSTM_1"); featex_scope:
    whether the nested model's weight names start with "Featex/"; full_model: `model.save` layout
    (weights under model_weights/, model_config as a root attribute); drop: weight paths
    ("pred/bias") to leave out; split_names: store each weight_names in chunks weight_names0,
    weight_names1, ... as Keras does for attributes over the HDF5 object-header limit.
    """
    p = variables["params"]
    layers = {"img_in": {}}  # layer -> {weight path inside the layer group: array}
    featex = {}
    for conv_name, weights in p["Featex"].items():
        for weight, value in weights.items():
            scope = f"Featex{suffix}/" if featex_scope else ""
            featex[f"{scope}{conv_name}{suffix}/{weight}:0"] = value
    layers["Featex"] = featex
    layers["outlierTrans"] = {"kernel": p["outlierTrans"]["kernel"]}
    layers["bnorm"] = dict(variables["batch_stats"]["bnorm"])
    layers["nestedAvgFeatex"] = {}
    layers["glbStd"] = {"min_std": np.reshape(p["glbStd"]["min_std"], (1, 1, 1, -1))}  # as Keras keeps it
    layers["cLSTM"] = dict(p["cLSTM"])
    layers["pred"] = dict(p["pred"])

    with h5py.File(path, "w") as f:
        if full_model:
            f.attrs["keras_version"] = b"2.2.4"
            f.attrs["backend"] = b"tensorflow"
            if model_config is not None:
                f.attrs["model_config"] = json.dumps(model_config).encode("utf8")
            root = f.create_group("model_weights")
        else:
            root = f
        root.attrs["layer_names"] = np.array([f"{n}{suffix}".encode("utf8") for n in layers])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.2.4"
        for name, weights in layers.items():
            group = root.create_group(f"{name}{suffix}")
            names = []
            for weight, value in weights.items():
                if name == "Featex":
                    full = weight
                else:
                    full = f"{name}{suffix}/{weight}:0"
                if f"{name}/{weight}" in drop:
                    continue
                names.append(full.encode("utf8"))
                group.create_dataset(full, data=np.asarray(value))
            # Keras writes np.asarray(list): an empty list becomes an empty float array.
            if split_names and len(names) > 1:
                for i, chunk in enumerate(np.array_split(np.array(names), 3)):
                    group.attrs[f"weight_names{i}"] = chunk
            else:
                group.attrs["weight_names"] = np.array(names) if names else np.array([])
    return path


def assert_same_variables(got, expected):
    flat_got = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(got)}
    flat_exp = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    assert set(flat_got) == set(flat_exp)
    for key, value in flat_exp.items():
        np.testing.assert_array_equal(np.asarray(flat_got[key]), np.asarray(value), err_msg=key)


@functools.lru_cache(maxsize=None)
def _jitted_apply(cfg):
    return jax.jit(lambda v, x: model.apply(v, x, cfg)["logits"])


def forward(variables, cfg, image):
    """Compiled once per configuration, so comparing two variable sets costs one compilation."""
    return np.asarray(_jitted_apply(cfg)(variables, image))


@pytest.fixture(scope="module")
def ptrain4_variables():
    return random_variables(config.released("Ptrain4"), seed=0)


@pytest.fixture(scope="module")
def ptrain0_variables():
    return random_variables(config.released("Ptrain0"), seed=1)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(7).uniform(-1, 1, (1, 24, 24, 3)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------
def _command(*args):
    return subprocess.run([sys.executable, "-m", "experiments.convert", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_cli_round_trip_gives_the_same_network(tmp_path, ptrain4_variables, image):
    h5 = write_keras_file(tmp_path / "weights.h5", ptrain4_variables)
    out = tmp_path / "converted"
    printed = _command("--h5", str(h5), "--out", str(out))
    assert printed.returncode == 0, printed.stderr
    assert "Ptrain4" in printed.stdout and str(out) in printed.stdout
    assert "assuming Ptrain4" in printed.stderr and "--variant" in printed.stderr  # windows unknowable

    cfg, loaded = checkpoint.load_model(out)
    assert cfg == config.released("Ptrain4")
    assert_same_variables(loaded, ptrain4_variables)
    # Kept as stored: the file's Bayar and unit-norm kernels are not re-projected on the way in.
    stored_bayar = ptrain4_variables["params"]["Featex"]["b1c1"]["bayar_kernel"]
    assert not np.allclose(np.asarray(model.project(ptrain4_variables["params"], cfg)["Featex"]["b1c1"]["bayar_kernel"]),
                           stored_bayar)
    np.testing.assert_array_equal(loaded["params"]["Featex"]["b1c1"]["bayar_kernel"], stored_bayar)

    expected = forward(ptrain4_variables, cfg, image)
    got = forward(loaded, cfg, image)
    assert got.shape == (1, 24, 24) and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)

    # A second conversion into the same directory needs --force.
    refused = _command("--h5", str(h5), "--out", str(out))
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: {out}: already holds a checkpoint; pass --force to replace it"]
    convert.convert(h5, out, force=True, variant="Ptrain2")
    assert checkpoint.load_model(out)[0] == config.released("Ptrain2")


@pytest.mark.parametrize("layout", [
    dict(suffix="_1"),
    dict(suffix="_3", featex_scope=False),
    dict(full_model=True, featex_scope=False),
    dict(split_names=True),
])
def test_layouts_and_scope_suffixes_read_the_same_arrays(tmp_path, ptrain4_variables, layout):
    h5 = write_keras_file(tmp_path / "w.h5", ptrain4_variables, **layout)
    weights = convert.read_keras_weights(h5)
    # The SRM filters are constants of the network: the file holds 2 first-layer arrays, 26 in Featex.
    assert sorted(k for k in weights.arrays if k.startswith("Featex/b1c1/")) == [
        "Featex/b1c1/bayar_kernel", "Featex/b1c1/regular_kernel"]
    assert sum(k.startswith("Featex/") for k in weights.arrays) == 26
    assert convert.recognise_variant(weights).variant == "Ptrain4"
    assert_same_variables(convert.to_variables(weights, config.released("Ptrain4")), ptrain4_variables)


def test_ptrain0_tanh_recognised_from_model_config(tmp_path, ptrain0_variables, image):
    cfg0 = config.released("Ptrain0")
    h5 = write_keras_file(tmp_path / "model.h5", ptrain0_variables, full_model=True, suffix="_2",
                          model_config=keras_model_config(cfg0))
    recognition, cfg, variables = convert.convert(h5, tmp_path / "out")
    assert recognition.variant == "Ptrain0" and recognition.warnings == ()
    assert cfg == cfg0 and cfg.transform_activation == "tanh" and cfg.windows == (7, 15, 31, 63)
    loaded_cfg, loaded = checkpoint.load_model(tmp_path / "out")
    assert loaded_cfg == cfg0
    got = forward(loaded, cfg0, image)
    np.testing.assert_allclose(got, forward(ptrain0_variables, cfg0, image), rtol=0, atol=1e-6)
    # The tanh is visible in the output, so guessing Ptrain1 would have given another network.
    assert np.max(np.abs(got - forward(loaded, config.released("Ptrain1"), image))) > 1e-4


# --------------------------------------------------------------------------------------------
# Variant recognition
# --------------------------------------------------------------------------------------------
def _weights_like(variant, name="weights.h5", model_config=None):
    cfg = config.released(variant)
    arrays = {key: np.zeros(shape, np.float32) for key, shape in convert.expected_layout(cfg).items()}
    return convert.KerasWeights(path=f"/some/dir/{name}", arrays=arrays, model_config=model_config)


@pytest.mark.parametrize("stored,name,model_config_of,requested,expected,warns", [
    ("Ptrain4", "weights.h5", None, None, "Ptrain4", "(7, 15, 31, 63)"),
    ("Ptrain4", "weights.h5", "Ptrain3", None, "Ptrain3", None),
    ("Ptrain4", "weights.h5", "Ptrain4", None, "Ptrain4", None),
    ("Ptrain4", "ManTraNet_Ptrain2.h5", None, None, "Ptrain2", None),
    ("Ptrain4", "weights.h5", None, "Ptrain3", "Ptrain3", None),
    ("Ptrain1", "weights.h5", None, None, "Ptrain1", "tanh"),
    ("Ptrain1", "weights.h5", "Ptrain0", None, "Ptrain0", None),
    ("Ptrain1", "weights.h5", "Ptrain1", None, "Ptrain1", None),
    ("Ptrain1", "ManTraNet_Ptrain0.h5", None, None, "Ptrain0", None),
    ("Ptrain1", "weights.h5", "Ptrain1", "Ptrain0", "Ptrain0", "suggests Ptrain1"),
    ("Ptrain1", "ManTraNet_Ptrain4.h5", None, None, "Ptrain1", "file name says Ptrain4"),
])
def test_recognition(stored, name, model_config_of, requested, expected, warns):
    mc = keras_model_config(config.released(model_config_of)) if model_config_of else None
    recognition = convert.recognise_variant(_weights_like(stored, name, mc), requested=requested)
    assert recognition.variant == expected
    if warns is None:
        assert recognition.warnings == ()
    else:
        assert any(warns in w for w in recognition.warnings), recognition.warnings


@pytest.mark.parametrize("stored,requested", [("Ptrain4", "Ptrain0"), ("Ptrain1", "Ptrain4")])
def test_requested_variant_must_fit_the_shapes(stored, requested):
    with pytest.raises(convert.ConversionError, match=f"{requested} does not fit"):
        convert.recognise_variant(_weights_like(stored), requested=requested)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------
def test_another_model_lists_what_is_missing(tmp_path):
    h5 = tmp_path / "resnet.h5"
    with h5py.File(h5, "w") as f:
        f.attrs["layer_names"] = np.array([b"dense_1"])
        g = f.create_group("dense_1")
        g.attrs["weight_names"] = np.array([b"dense_1/kernel:0"])
        g.create_dataset("dense_1/kernel:0", data=np.zeros((4, 2), np.float32))
    with pytest.raises(convert.ConversionError) as e:
        convert.convert(h5, tmp_path / "out")
    message = str(e.value)
    assert str(h5) in message
    assert "missing Featex/b1c1/regular_kernel:0" in message and "missing cLSTM/recurrent_kernel:0" in message
    assert "dense_1/kernel" in message and "not a ManTra-Net release file" in message
    assert not (tmp_path / "out").exists()


def test_missing_or_misshapen_arrays_are_named(tmp_path, ptrain4_variables):
    h5 = write_keras_file(tmp_path / "partial.h5", ptrain4_variables, drop=("pred/bias",))
    with pytest.raises(convert.ConversionError, match=r"missing pred/bias:0 \(1,\)"):
        convert.recognise_variant(convert.read_keras_weights(h5))

    bad = jax.tree.map(lambda a: a, ptrain4_variables)
    bad["params"]["Featex"]["b2c1"] = {"kernel": np.zeros((3, 3, 32, 48), np.float32),
                                       "bias": np.zeros((48,), np.float32)}
    h5 = write_keras_file(tmp_path / "wider.h5", bad)
    with pytest.raises(convert.ConversionError,
                       match=r"Featex/b2c1/kernel:0: expected shape \(3, 3, 32, 64\), found \(3, 3, 32, 48\)"):
        convert.recognise_variant(convert.read_keras_weights(h5))


def test_weight_names_pointing_nowhere(tmp_path):
    h5 = tmp_path / "dangling.h5"
    with h5py.File(h5, "w") as f:
        f.attrs["layer_names"] = np.array([b"pred"])
        g = f.create_group("pred")
        g.attrs["weight_names"] = np.array([b"pred/kernel:0"])
    with pytest.raises(convert.ConversionError, match="pred/pred/kernel:0 is missing"):
        convert.read_keras_weights(h5)


def test_not_hdf5_truncated_or_absent_files_are_named(tmp_path, ptrain4_variables):
    text = tmp_path / "notes.h5"
    text.write_text("these are not weights\n")
    with pytest.raises(convert.ConversionError, match=f"{text}: not a readable HDF5 file"):
        convert.read_keras_weights(text)

    whole = write_keras_file(tmp_path / "whole.h5", ptrain4_variables)
    cut = tmp_path / "cut.h5"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(convert.ConversionError, match=str(cut)):
        convert.read_keras_weights(cut)

    with pytest.raises(convert.ConversionError, match="no such file"):
        convert.read_keras_weights(tmp_path / "absent.h5")
