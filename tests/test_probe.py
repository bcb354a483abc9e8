"""The trace probe (mantra_jax/eval/probe.py) and the study's image scores, against numpy references."""
import numpy as np
import pytest

from mantra_jax.eval import probe
from mantra_jax.study import trace


def _photo(seed=0, size=64):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size // 8, size // 8, 3)).astype(np.float32)
    import cv2

    smooth = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth + rng.normal(0, 3, smooth.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("op", probe.OPS)
def test_local_manipulation_changes_only_the_region(op):
    photo = _photo(1)
    image, mask = probe.local_manipulation(photo, op, np.random.default_rng(3))
    assert image.dtype == np.uint8 and image.shape == photo.shape
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    inside = mask.astype(bool)
    if op != "jpeg_grid":  # the whole photo is JPEG-compressed first for that one
        assert np.array_equal(image[~inside], photo[~inside])
    assert np.abs(image[inside].astype(int) - photo[inside]).mean() > 0.3


def test_jpeg_grid_recompresses_on_a_shifted_grid():
    photo = _photo(2)
    rng = np.random.default_rng(5)
    shifted = probe.apply_op("jpeg_grid", photo, rng)
    aligned = probe._jpeg(photo, 80)
    assert shifted.shape == photo.shape and not np.array_equal(shifted, aligned)


def test_deviation_descriptors_match_a_loop():
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(12, 10, 2)).astype(np.float32)
    window = 5
    d = probe.deviation_descriptors(feat, window)
    assert d.shape == (12, 10, 6)
    padded = np.pad(feat, ((2, 2), (2, 2), (0, 0)), mode="symmetric")  # OpenCV's BORDER_REFLECT
    for (y, x) in [(0, 0), (5, 4), (11, 9)]:
        block = padded[y : y + window, x : x + window]
        local_mean = block.mean((0, 1))
        z = (local_mean - feat.reshape(-1, 2).mean(0)) / (feat.reshape(-1, 2).std(0) + 1e-6)
        ratio = np.log((block ** 2).mean((0, 1)) + 1e-8) - np.log((feat ** 2).reshape(-1, 2).mean(0) + 1e-8)
        np.testing.assert_allclose(d[y, x], np.concatenate([z, z * z, ratio]), rtol=1e-4, atol=1e-4)


def test_fit_logistic_reaches_the_optimum_of_its_objective():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    y = (x @ [1.5, -2.0, 0.0] + rng.normal(0, 1.0, 400) > 0.3).astype(float)
    w, mean, scale = probe.fit_logistic(x, y, l2=1e-2)
    z = np.concatenate([(x - mean) / scale, np.ones((400, 1))], 1)
    p = 1 / (1 + np.exp(-(z @ w)))
    balance = np.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    penalty = np.r_[np.full(3, 1e-2 * 400), 0.0]
    gradient = z.T @ (balance * (p - y)) + penalty * w
    assert np.abs(gradient).max() < 1e-6
    assert w[0] > 0 and w[1] < 0 and abs(w[2]) < 0.3 * abs(w[1])
    scores = probe.logistic_score(x, (w, mean, scale))
    np.testing.assert_allclose(scores, z @ w)


def test_probe_tells_a_trace_sensitive_extractor_from_a_blind_one():
    import cv2

    photos = [_photo(s) for s in range(6)]
    fit = probe.probe_set(photos[:3], seed=0, ops=("noise", "blur"))
    test = probe.probe_set(photos[3:], seed=1, ops=("noise", "blur"))

    def residual(rgb):  # a high-pass: sees noise and blur
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return np.abs(grey - cv2.blur(grey, (3, 3)))[..., None]

    def brightness(rgb):  # a low-pass: blind to both (these ops keep the local mean)
        return cv2.blur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), (9, 9))[..., None]

    seeing = probe.run_probe(residual, fit, test, window=7, pixels_per_image=600)
    blind = probe.run_probe(brightness, fit, test, window=7, pixels_per_image=600)
    assert set(seeing) == {"noise", "blur", "all"}
    assert seeing["noise"] > 0.8 and seeing["blur"] > 0.7
    assert blind["all"] < 0.65 < seeing["all"]


def test_image_scores_match_numpy():
    rng = np.random.default_rng(4)
    prob = rng.random((40, 50)).astype(np.float32)
    assert trace.image_score(prob, "mean") == pytest.approx(prob.mean())
    assert trace.image_score(prob, "max") == pytest.approx(prob.max())
    top = np.sort(prob.ravel())[-20:]
    assert trace.image_score(prob, "top1pct_mean") == pytest.approx(top.mean())
    padded = np.pad(prob, 7, mode="reflect")  # OpenCV's default border: reflect-101
    blurred = np.array([[padded[y : y + 15, x : x + 15].mean() for x in range(50)] for y in range(40)])
    assert trace.image_score(prob, "p99_blur") == pytest.approx(np.percentile(blurred, 99), rel=1e-5)
    with pytest.raises(ValueError, match="unknown image score"):
        trace.image_score(prob, "median")


def test_trace_study_commands_and_shipping_rule(tmp_path):
    from pathlib import Path

    study = trace.TraceStudy(out=tmp_path / "study", pristine_dir=None, imc_checkpoint=Path("checkpoints/imc_small"),
                             references={})
    commands = study.commands()
    assert set(commands) == set(trace.RUNS)
    stage2 = commands["e2e_trace_pp_stage2"]
    # A run's own flags come after the defaults they replace (absl: the last one wins).
    assert stage2.index("--init=authors") > stage2.index("--init=half_random")
    assert f"--imc_checkpoint={(tmp_path / 'study' / 'e2e_trace_ppfalse').absolute()}" in stage2
    assert f"--workdir={tmp_path / 'study' / 'e2e_trace_pp_stage2'}" in stage2
    table = {"map of a": {"all": 0.7}, "map of b": {"all": 0.8}, "Featex of c": {"all": 0.99}}
    assert trace.shipping_choice(table) == "b"
    assert trace.shipping_choice({}) is None
