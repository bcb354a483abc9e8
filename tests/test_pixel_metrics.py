"""Tests for mantra_jax.metrics.pixel: known answers and straightforward numpy references."""
import numpy as np
import pytest

from mantra_jax.metrics import pixel as pm


def _rect_mask(height=32, width=48, top=4, left=6, bottom=20, right=30):
    mask = np.zeros((height, width), np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


def _pairwise_auc(scores, labels):
    """O(n^2) reference: P(pos > neg) + P(pos == neg) / 2."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels) != 0
    pos, neg = scores[labels][:, None], scores[~labels][None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def _numpy_f1(pred, mask):
    tp = np.sum(pred & (mask == 1))
    fp = np.sum(pred & (mask == 0))
    fn = np.sum(~pred & (mask == 1))
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


# --------------------------------------------------------------------------------------------
# Known answers
# --------------------------------------------------------------------------------------------
def test_perfect_predictor_scores_one():
    mask = _rect_mask()
    row = pm.image_metrics(pm.image_stats(mask.astype(np.float32), mask))
    assert row["auc"] == 1.0
    assert row["f1_at_0.5"] == 1.0 and row["f1_best"] == 1.0 and row["iou_at_0.5"] == 1.0


def test_inverted_predictor_scores_zero_or_one_with_inversion():
    mask = _rect_mask()  # 25 % forged: the negation rule does not apply
    stats = pm.image_stats(1.0 - mask.astype(np.float32), mask)
    plain = pm.image_metrics(stats)
    assert plain["auc"] == 0.0
    assert plain["f1_at_0.5"] == 0.0 and plain["iou_at_0.5"] == 0.0
    assert not plain["negated"]
    inverted = pm.image_metrics(stats, invert=True)
    assert inverted["f1_at_0.5"] == 1.0 and inverted["iou_at_0.5"] == 1.0 and inverted["f1_best"] == 1.0
    assert inverted["inverted"]
    summary = pm.summarize([stats], invert=True)
    assert summary["f1_at_0.5_mean"] == 1.0 and summary["n_inverted_at_0.5"] == 1


@pytest.mark.parametrize("value", [0.0, 0.3, 0.5, 1.0])
def test_constant_predictor_scores_auc_one_half(value):
    mask = _rect_mask()
    stats = pm.image_stats(np.full(mask.shape, value), mask)
    assert pm.image_metrics(stats)["auc"] == 0.5
    assert pm.summarize([stats, stats])["pixel_auc_pooled"] == 0.5


def test_negation_rule_flips_above_half_forged():
    mask = 1 - _rect_mask()  # 75 % forged
    detects_minority = 1.0 - mask.astype(np.float32)  # flags the pristine minority as anomalous
    stats = pm.image_stats(detects_minority, mask)
    with_rule = pm.image_metrics(stats, negate_rule=True)
    assert with_rule["negated"] and with_rule["auc"] == 1.0
    without_rule = pm.image_metrics(stats, negate_rule=False)
    assert not without_rule["negated"] and without_rule["auc"] == 0.0
    summary = pm.summarize([stats], negate_rule=True)
    assert summary["n_negated"] == 1 and summary["pixel_auc_pooled"] == 1.0 and summary["negate_rule"]
    # The rule is about the AUC only: F1 still sees the prediction as it is.
    assert with_rule["f1_at_0.5"] == 0.0


def test_negation_rule_needs_strictly_more_than_half():
    mask = np.zeros((4, 8), np.uint8)
    mask[:2] = 1  # exactly 50 %
    stats = pm.image_stats(mask.astype(float), mask)
    row = pm.image_metrics(stats, negate_rule=True)
    assert not row["negated"] and row["auc"] == 1.0


def test_all_zero_and_all_forged_masks_are_skipped_for_auc():
    perfect_mask = _rect_mask()
    perfect = pm.image_stats(perfect_mask.astype(float), perfect_mask, name="perfect")
    empty = pm.image_stats(np.full((32, 48), 0.9), np.zeros((32, 48), np.uint8), name="empty")
    full = pm.image_stats(np.full((32, 48), 0.1), np.ones((32, 48), np.uint8), name="full")
    assert pm.image_metrics(empty)["auc"] is None and pm.image_metrics(full)["auc"] is None
    summary = pm.summarize([perfect, empty, full])
    assert summary["pixel_auc_mean"] == 1.0  # not pulled down by a 0 for the undefined ones
    assert summary["n_auc_scored"] == 1 and summary["n_auc_undefined"] == 2
    assert summary["n_empty_masks"] == 1
    # An empty mask has no F1 either; the full mask does (every pixel missed at 0.1).
    assert pm.image_metrics(empty)["f1_at_0.5"] is None
    assert summary["n_f1_scored"] == 2 and summary["f1_at_0.5_mean"] == 0.5


def test_empty_set_summarizes_to_none():
    summary = pm.summarize([])
    assert summary["n_images"] == 0 and summary["pixel_auc_mean"] is None and summary["pixel_auc_pooled"] is None


# --------------------------------------------------------------------------------------------
# Against numpy references
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_histogram_auc_matches_exact_rank_auc(seed):
    rng = np.random.default_rng(seed)
    mask = (rng.random((40, 56)) < rng.uniform(0.1, 0.45)).astype(np.uint8)
    prob = np.clip(0.25 * mask + rng.beta(2, 3, mask.shape), 0, 1)
    stats = pm.image_stats(prob, mask, bins=1024)
    exact = pm.roc_auc(prob.ravel(), mask.ravel())
    assert abs(pm.image_metrics(stats)["auc"] - exact) < 1e-3


def test_histogram_auc_is_exact_when_scores_sit_on_distinct_bins():
    rng = np.random.default_rng(3)
    mask = (rng.random((30, 30)) < 0.3).astype(np.uint8)
    prob = (rng.integers(0, 64, mask.shape) + 0.5 * mask) / 64  # ties within a score, none across bins
    stats = pm.image_stats(prob, mask, bins=256)
    assert pm.image_metrics(stats)["auc"] == pytest.approx(pm.roc_auc(prob.ravel(), mask.ravel()), abs=1e-12)


def test_pooled_auc_matches_exact_auc_over_all_pixels_with_negation():
    rng = np.random.default_rng(4)
    probs, masks, stats = [], [], []
    for forged_share in (0.2, 0.4, 0.8):  # the last one is negated
        mask = (rng.random((24, 36)) < forged_share).astype(np.uint8)
        prob = np.clip(0.2 * mask + rng.random(mask.shape) * 0.8, 0, 1)
        stats.append(pm.image_stats(prob, mask))
        probs.append(1 - prob if mask.mean() > 0.5 else prob)
        masks.append(mask)
    summary = pm.summarize(stats, negate_rule=True)
    exact = pm.roc_auc(np.concatenate([p.ravel() for p in probs]), np.concatenate([m.ravel() for m in masks]))
    assert summary["n_negated"] == 1
    assert abs(summary["pixel_auc_pooled"] - exact) < 1e-3
    per_image = [pm.roc_auc(p.ravel(), m.ravel()) for p, m in zip(probs, masks)]
    assert abs(summary["pixel_auc_mean"] - np.mean(per_image)) < 1e-3


def test_f1_and_iou_at_half_are_exact_at_the_threshold():
    mask = _rect_mask()
    rng = np.random.default_rng(5)
    prob = rng.random(mask.shape)
    # Pixels exactly at 0.5 and just below it: p >= 0.5 must be decided exactly.
    prob[::3, ::2] = 0.5
    prob[1::3, ::2] = np.nextafter(0.5, 0.0)
    row = pm.image_metrics(pm.image_stats(prob, mask, bins=1024))
    f1, iou = _numpy_f1(prob >= 0.5, mask)
    assert row["f1_at_0.5"] == pytest.approx(f1, abs=1e-12)
    assert row["iou_at_0.5"] == pytest.approx(iou, abs=1e-12)
    # With inversion: the better of q >= 0.5 and its flip, which counts a pixel forged when q < 0.5.
    q = 1 - prob
    inverted = pm.image_metrics(pm.image_stats(q, mask), invert=True)
    expected = max(_numpy_f1(q >= 0.5, mask)[0], _numpy_f1(q < 0.5, mask)[0])
    assert inverted["f1_at_0.5"] == pytest.approx(expected, abs=1e-12)


def test_best_threshold_f1_matches_a_brute_force_sweep():
    rng = np.random.default_rng(6)
    mask = _rect_mask()
    prob = np.clip(0.3 * mask + 0.7 * rng.random(mask.shape), 0, 1)
    bins = 16
    row = pm.image_metrics(pm.image_stats(prob, mask, bins=bins))
    sweep = [_numpy_f1(prob >= k / bins, mask)[0] if np.any(prob >= k / bins) else 0.0 for k in range(bins + 1)]
    assert row["f1_best"] == pytest.approx(max(sweep), abs=1e-12)
    assert row["best_threshold"] == np.argmax(sweep) / bins


def test_roc_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 5, 60).astype(float)
    labels = rng.random(60) < 0.4
    assert pm.roc_auc(scores, labels) == pytest.approx(_pairwise_auc(scores, labels), abs=1e-12)
    assert pm.roc_auc([0.1, 0.2], [1, 1]) is None


def test_balanced_accuracy_known_answers():
    scores = [0.9, 0.6, 0.4, 0.2, 0.55, 0.1]
    labels = [1, 1, 1, 0, 0, 0]
    # At 0.5: TPR 2/3, TNR 2/3.
    assert pm.balanced_accuracy(scores, labels, 0.5) == pytest.approx(2 / 3)
    best, threshold = pm.best_balanced_accuracy(scores, labels)
    brute = max(pm.balanced_accuracy(scores, labels, t) for t in [*scores, np.inf])
    assert best == pytest.approx(brute)
    assert pm.balanced_accuracy(scores, labels, threshold) == pytest.approx(best)


def test_image_level_metrics_with_authentic_images():
    mask = _rect_mask()
    forged = [pm.image_stats(np.where(mask, 0.9, 0.2), mask, name=f"f{i}") for i in range(3)]
    authentic = [pm.image_stats(np.full(mask.shape, 0.05 * (i + 1)), None, name=f"a{i}") for i in range(3)]
    summary = pm.summarize(forged, authentic=authentic)
    assert summary["image_auc"] == 1.0 and summary["n_authentic"] == 3
    assert summary["image_balanced_accuracy_best"] == 1.0
    # Constant maps everywhere: the image score cannot separate anything.
    flat = [pm.image_stats(np.full(mask.shape, 0.5), mask)] * 2
    flat_summary = pm.summarize(flat, authentic=[0.5, 0.5])
    assert flat_summary["image_auc"] == 0.5
    # Bare scores work as well as statistics.
    assert pm.summarize(forged, authentic=[0.0, 0.01])["image_auc"] == 1.0


# --------------------------------------------------------------------------------------------
# Storage and input checks
# --------------------------------------------------------------------------------------------
def test_stats_round_trip_through_npz(tmp_path):
    rng = np.random.default_rng(8)
    stats = [pm.image_stats(rng.random((10 + i, 12)), (rng.random((10 + i, 12)) < 0.3), bins=64, name=f"img_{i}")
             for i in range(3)]
    path = tmp_path / "stats.npz"
    pm.save_stats(path, stats)
    loaded = pm.load_stats(path)
    assert [s.name for s in loaded] == [s.name for s in stats]
    for a, b in zip(stats, loaded):
        np.testing.assert_array_equal(a.hist_forged, b.hist_forged)
        np.testing.assert_array_equal(a.hist_pristine, b.hist_pristine)
        assert (a.score_mean, a.score_max, a.height, a.width) == (b.score_mean, b.score_max, b.height, b.width)
    assert pm.summarize(loaded) == pm.summarize(stats)
    pm.save_stats(tmp_path / "empty.npz", [], bins=64)
    assert pm.load_stats(tmp_path / "empty.npz") == []


def test_load_stats_rejects_other_npz(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz"):
        pm.load_stats(tmp_path / "other.npz")


@pytest.mark.parametrize("bins", [0, 1, 1000, 3])
def test_bins_must_be_a_power_of_two(bins):
    with pytest.raises(ValueError, match="power of two"):
        pm.image_stats(np.zeros((2, 2)), np.zeros((2, 2)), bins=bins)


def test_bad_predictions_are_reported_with_the_image_name():
    mask = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="img7.*range"):
        pm.image_stats(np.full((4, 4), 1.5), mask, name="img7")
    with pytest.raises(ValueError, match="img7.*NaN"):
        pm.image_stats(np.full((4, 4), np.nan), mask, name="img7")
    with pytest.raises(ValueError, match="img7.*shape"):
        pm.image_stats(np.zeros((4, 5)), mask, name="img7")
    # Float rounding just past 1 is accepted.
    assert pm.image_stats(np.full((4, 4), 1 + 1e-7), mask).score_max == 1.0


def test_summarize_rejects_mixed_bin_counts():
    mask = _rect_mask()
    with pytest.raises(ValueError, match="bin counts"):
        pm.summarize([pm.image_stats(mask * 1.0, mask, bins=64), pm.image_stats(mask * 1.0, mask, bins=128)])


# --------------------------------------------------------------------------------------------
# Every AUC exact; the negation rule applied to exactly the images reported
# --------------------------------------------------------------------------------------------
def _rank_auc(scores, labels):
    """Reference: the Mann-Whitney U from tie-averaged ranks, computed directly with numpy."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel() != 0
    values, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # 1-based rank of each distinct value's first copy
    ranks = (first_rank + (counts - 1) / 2.0)[inverse.ravel()]
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _weak_maps(concentrated: bool, seed: int, shape=(48, 64)):
    """(probability, mask) pairs shaped like a weak model's: spread over [0.04, 0.56], or with half
    the pixels within 2e-4 of 0.158 (one histogram bin), forged pixels slightly higher."""
    rng = np.random.default_rng(seed)
    maps = []
    for forged_share in (0.15, 0.3, 0.7, 1.0):  # the last two are negated, the last has no own AUC
        mask = (rng.random(shape) < forged_share).astype(np.uint8)
        if concentrated:
            prob = 0.158 + rng.uniform(-2e-4, 2e-4, shape) + 3e-5 * mask
            spread = rng.random(shape) < 0.5
            prob[spread] = rng.uniform(0.04, 0.56, spread.sum())
        else:
            prob = np.clip(rng.uniform(0.04, 0.56, shape) + 0.05 * mask, 0, 1)
        maps.append((prob.astype(np.float32), mask))
    return maps


@pytest.mark.parametrize("concentrated", [True, False])
def test_every_auc_equals_the_exact_rank_auc(concentrated, tmp_path):
    maps = _weak_maps(concentrated, seed=11)
    stats = [pm.image_stats(p, m, name=f"im{i}") for i, (p, m) in enumerate(maps)]
    authentic = [pm.image_stats(np.full((8, 8), 0.158, np.float32) + 1e-5 * i, None, name=f"au{i}") for i in range(3)]
    pm.save_stats(tmp_path / "stats.npz", stats)  # what --from_stats reads back
    for loaded in (stats, pm.load_stats(tmp_path / "stats.npz")):
        summary = pm.summarize(loaded, authentic=authentic)
        maps_masks = [m for _, m in maps]
        flipped = [1.0 - p.astype(np.float64) if m.mean() > 0.5 else p for p, m in maps]
        per_image = [_rank_auc(f, m) for f, m in zip(flipped, maps_masks) if 0 < m.mean() < 1]
        assert summary["pixel_auc_mean"] == pytest.approx(np.mean(per_image), abs=1e-12)
        pooled = _rank_auc(np.concatenate([f.ravel() for f in flipped]), np.concatenate([m.ravel() for m in maps_masks]))
        assert summary["pixel_auc_pooled"] == pytest.approx(pooled, abs=1e-12)
        scores = [float(np.mean(p, dtype=np.float64)) for p, _ in maps] + [a.score_mean for a in authentic]
        assert summary["image_auc"] == pytest.approx(_rank_auc(scores, [1] * 4 + [0] * 3), abs=1e-12)
        assert summary["auc_error_bound"] == {"pixel_auc_mean": 0.0, "pixel_auc_pooled": 0.0, "image_auc": 0.0}
    if concentrated:  # what the 1,024-bin histogram gave: beyond 1e-4, and its bound says so
        binned = pm.summarize([pm.ImageStats(s.name, s.hist_forged, s.hist_pristine, s.score_mean, s.score_max,
                                             s.height, s.width) for s in stats])
        assert abs(binned["pixel_auc_pooled"] - pooled) > 1e-4
        assert binned["auc_error_bound"]["pixel_auc_pooled"] >= abs(binned["pixel_auc_pooled"] - pooled)


def test_the_pooled_auc_flips_exactly_the_images_reported_negated():
    """A 100 %-forged image has no AUC of its own; the pooled AUC flipped it while the report said
    n_negated 0 and negated False. Each metric must equal the exact AUC with exactly the images it
    reports as negated flipped."""
    maps = _weak_maps(False, seed=12)
    stats = [pm.image_stats(p, m, name=f"im{i}") for i, (p, m) in enumerate(maps)]
    for negate_rule in (True, False):
        summary = pm.summarize(stats, negate_rule=negate_rule)
        rows = [pm.image_metrics(s, negate_rule=negate_rule) for s in stats]
        reported = {r["name"] for r in rows if r["negated"]}
        assert summary["n_negated"] == len(reported)
        flipped = [1.0 - p.astype(np.float64) if f"im{i}" in reported else p for i, (p, _) in enumerate(maps)]
        pooled = _rank_auc(np.concatenate([f.ravel() for f in flipped]), np.concatenate([m.ravel() for _, m in maps]))
        assert summary["pixel_auc_pooled"] == pytest.approx(pooled, abs=1e-4)  # 1e-4: the old histograms pass
        assert summary["pixel_auc_pooled"] == pytest.approx(pooled, abs=1e-12)
        assert set(summary["negated_images"]["pixel_auc_pooled"]) == reported
        assert set(summary["negated_images"]["pixel_auc_mean"]) == {r["name"] for r in rows
                                                                    if r["negated"] and r["auc"] is not None}
        for row, f, (_, m) in zip(rows, flipped, maps):
            assert row["auc"] == (pytest.approx(_rank_auc(f, m), abs=1e-12) if 0 < m.mean() < 1 else None)
    assert summary["n_negated"] == 0  # negate_rule False
    assert pm.summarize(stats)["negated_images"]["pixel_auc_pooled"] == ["im2", "im3"]


def test_statistics_without_distinct_values_still_load_with_a_stated_bound(tmp_path):
    maps = _weak_maps(False, seed=13)
    stats = [pm.image_stats(p, m, name=f"im{i}") for i, (p, m) in enumerate(maps)]
    np.savez(tmp_path / "old.npz", names=np.array([s.name for s in stats]),  # the format before exact AUCs
             hist_forged=np.stack([s.hist_forged for s in stats]), hist_pristine=np.stack([s.hist_pristine for s in stats]),
             score_mean=np.array([s.score_mean for s in stats]), score_max=np.array([s.score_max for s in stats]),
             height=np.array([s.height for s in stats]), width=np.array([s.width for s in stats]))
    old = pm.load_stats(tmp_path / "old.npz")
    assert not any(s.exact for s in old)
    exact, binned = pm.summarize(stats), pm.summarize(old)
    for key in ("pixel_auc_mean", "pixel_auc_pooled"):
        bound = binned["auc_error_bound"][key]
        assert 0 < bound and abs(binned[key] - exact[key]) <= bound
