"""Exports of a tiny random checkpoint: StableHLO (JAX only, always tested) and ONNX (skipped
without the optional packages of requirements-export.txt), each against Predictor.predict."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest

from mantra_jax import checkpoint
from mantra_jax.infer import export
from mantra_jax.nn import config
from mantra_jax.infer.predict import Predictor
from tests.helpers import random_variables

ROOT = Path(__file__).resolve().parents[1]
TINY = config.make_config(width_scale=0.125, windows=(7, 15))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    variables = random_variables(TINY, seed=3)
    bnorm = variables["batch_stats"]["bnorm"]
    bnorm["moving_variance"] = np.abs(bnorm["moving_variance"]) + np.float32(0.5)  # a variance
    checkpoint.save_model(directory, TINY, variables)
    return directory


@pytest.fixture(scope="module")
def stablehlo_export(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    return out, export.export_checkpoint(ckpt, out, formats=("stablehlo",))


def test_min_side_and_check_sizes():
    assert export.min_side(TINY) == 8  # 4 x the 5x5 first layer's radius; windows 7, 15 need 8
    assert export.min_side(config.released("Ptrain4")) == 16  # the 31 window
    assert export.min_side(config.released("Ptrain0")) == 32  # the 63 window
    sizes = export.check_sizes(config.released("Ptrain4"))
    assert all(h % 2 and w % 2 and min(h, w) > 16 for h, w in sizes)


def test_stablehlo_matches_predict_on_odd_sizes(stablehlo_export, ckpt):
    out, report = stablehlo_export
    assert (out / export.STABLEHLO_FILE).stat().st_size > 0
    assert report["max_abs_diff_stablehlo"] < 1e-4 and report["passed"]
    assert json.loads((out / export.CHECK_FILE).read_text())["max_abs_diff_stablehlo"] == report["max_abs_diff_stablehlo"]
    assert "max_abs_diff_onnx" not in report
    # One more size and a batch of three, against Predictor.predict image by image.
    run = export.load_stablehlo(out / export.STABLEHLO_FILE)
    predictor = Predictor.from_checkpoint(ckpt)
    images = np.random.default_rng(7).integers(0, 256, (3, 9, 31, 3), dtype=np.uint8)
    prob = run(images)
    assert prob.shape == (3, 9, 31) and prob.dtype == np.float32
    for image, p in zip(images, prob):
        np.testing.assert_allclose(p, predictor.predict(image), atol=1e-5, equal_nan=False)
    assert np.all(np.isfinite(prob)) and np.ptp(prob) > 0


def test_stablehlo_is_shape_polymorphic_and_refuses_small_images(stablehlo_export):
    out, _ = stablehlo_export
    exported = jax.export.deserialize(bytearray((out / export.STABLEHLO_FILE).read_bytes()))
    (aval,) = exported.in_avals
    assert aval.dtype == jnp.uint8 and str(aval.shape) == "(N, H, W, 3)"
    assert str(exported.out_avals[0].shape) == "(N, H, W)" and exported.out_avals[0].dtype == jnp.float32
    with pytest.raises(ValueError, match="shape"):  # jax: "Error refining shapes"
        exported.call(np.zeros((1, 7, 20, 3), np.uint8))  # below min_side = 8


def test_stablehlo_runs_without_the_model_code(stablehlo_export, tmp_path):
    out, _ = stablehlo_export
    image = np.random.default_rng(1).integers(0, 256, (1, 13, 17, 3), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    script = (
        "import sys, numpy as np, jax\n"
        f"exported = jax.export.deserialize(bytearray(open({str(out / export.STABLEHLO_FILE)!r}, 'rb').read()))\n"
        f"np.save({str(tmp_path / 'prob.npy')!r}, np.asarray(exported.call(np.load({str(tmp_path / 'image.npy')!r}))))\n"
        "assert not [m for m in sys.modules if m.startswith('mantra_jax')]\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, timeout=300)
    expected = export.load_stablehlo(out / export.STABLEHLO_FILE)(image)
    np.testing.assert_array_equal(np.load(tmp_path / "prob.npy"), expected)


def test_the_check_catches_a_different_model():
    batches = export.check_images(TINY)
    reference = lambda image: np.full(image.shape[:2], 0.25, np.float32)
    off = lambda images: np.full(images.shape[:3], 0.25, np.float32) + np.float32(3e-4) * (np.arange(images.shape[2]) == 5)
    assert export.max_abs_diff(off, reference, batches) == pytest.approx(3e-4, rel=1e-3)
    nan = lambda images: np.where(np.arange(images.shape[2]) == 3, np.nan, 0.25).astype(np.float32) + 0 * images[..., 0]
    assert export.max_abs_diff(nan, reference, batches) == np.inf
    with pytest.raises(export.ExportCheckFailed, match="returned"):
        export.max_abs_diff(lambda images: np.zeros(images.shape[:3], np.float64), reference, batches)


def test_a_failed_check_writes_the_report_and_raises(ckpt, tmp_path):
    with pytest.raises(export.ExportCheckFailed, match="StableHLO differs"):
        export.export_checkpoint(ckpt, tmp_path, formats=("stablehlo",), tolerance=0.0)
    assert json.loads((tmp_path / export.CHECK_FILE).read_text())["passed"] is False


def test_portable_jaxpr_rewrites_pad_iota_and_empty_arrays_exactly():
    def fn(x):  # a zero pad, an edge pad (which makes empty intermediates) and an iota
        y = jnp.pad(x, ((0, 0), (2, 1), (0, 0), (0, 0))) + jnp.arange(x.shape[1] + 3)[None, :, None, None]
        return jnp.pad(y, ((0, 0), (0, 0), (3, 0), (0, 0)), mode="edge") * 2

    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 6, 3)).astype(np.float32))
    def names(jaxpr):  # primitives, nested ones included
        found = set()
        for eqn in jaxpr.eqns:
            found.add(eqn.primitive.name)
            for sub in jex.jaxprs_in_params(eqn.params):
                found |= names(sub)
        return found

    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    assert {"pad", "iota"} <= names(jax.make_jaxpr(fn)(spec).jaxpr)
    portable = export.portable_jaxpr(fn, spec)
    assert not {"pad", "iota", "jit"} & names(portable.jaxpr)
    assert any(0 in getattr(v.aval, "shape", ()) for e in jax.make_jaxpr(fn)(spec).eqns
               for sub in jex.jaxprs_in_params(e.params) for q in sub.eqns for v in q.outvars)
    assert not any(0 in getattr(v.aval, "shape", ()) for e in portable.jaxpr.eqns for v in e.outvars)
    np.testing.assert_array_equal(np.asarray(jex.jaxpr_as_fun(portable)(x)[0]), np.asarray(fn(x)))


def test_the_command_refuses_an_imc_checkpoint_in_one_line(tmp_path):
    imc = config.make_config(width_scale=0.125, head="imc", num_classes=7)
    checkpoint.write_model_config(tmp_path / "imc", imc)
    flagfile = tmp_path / "export.flags"
    flagfile.write_text(f"--checkpoint={tmp_path / 'imc'}\n--out={tmp_path / 'out'}\n--formats=stablehlo\n")
    proc = subprocess.run([sys.executable, "-m", "experiments.export", f"--flagfile={flagfile}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot export") and "'imc' head" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_onnx_dependency_names_the_install(monkeypatch, ckpt, tmp_path):
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # import jax2onnx now raises ImportError
    with pytest.raises(export.ExportDependencyError, match="requirements-export.txt"):
        export.export_checkpoint(ckpt, tmp_path / "out", formats=("stablehlo", "onnx"))
    assert not (tmp_path / "out").exists()  # nothing was started


def test_onnx_matches_predict_and_documents_itself(ckpt, tmp_path):
    pytest.importorskip("jax2onnx", reason="ONNX export is optional: pip install -r requirements-export.txt")
    onnx = pytest.importorskip("onnx", reason="ONNX export is optional: pip install -r requirements-export.txt")
    ort = pytest.importorskip("onnxruntime", reason="ONNX export is optional: pip install -r requirements-export.txt")
    proc = subprocess.run([sys.executable, "-m", "experiments.export", f"--checkpoint={ckpt}", f"--out={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / export.CHECK_FILE).read_text())
    assert report["max_abs_diff_onnx"] < 1e-4 and report["max_abs_diff_stablehlo"] < 1e-4
    model = onnx.load(str(tmp_path / export.ONNX_FILE))
    meta = {p.key: p.value for p in model.metadata_props}
    assert {"preprocessing", "output", "min_height_width", "opset", "model_config"} <= set(meta)
    assert config.from_dict(json.loads(meta["model_config"])) == TINY
    assert any(o.version == export.DEFAULT_OPSET for o in model.opset_import if o.domain in ("", "ai.onnx"))
    session = ort.InferenceSession(str(tmp_path / export.ONNX_FILE), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, outp.name, outp.type) == ("input", "tensor(uint8)", "prob", "tensor(float)")
    assert all(isinstance(d, str) for d in inp.shape[:3]) and inp.shape[3] == 3
    images = np.random.default_rng(2).integers(0, 256, (3, 11, 29, 3), dtype=np.uint8)
    prob = session.run(["prob"], {"input": images})[0]
    predictor = Predictor.from_checkpoint(ckpt)
    for image, p in zip(images, prob):
        np.testing.assert_allclose(p, predictor.predict(image), atol=1e-4, equal_nan=False)
