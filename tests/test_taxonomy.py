"""Tests for mantra_jax.imc.taxonomy: the table against the published one, level maps, predictions."""

import collections
import csv
import importlib.resources
import io

import numpy as np
import pytest

from mantra_jax.imc import taxonomy

# sha256 of the cells of the authors' published taxonomy.csv (shared/reference), taken when the
# package copy was made; a changed copy (an edited row, a re-derived grouping) fails here.
PUBLISHED_TABLE_DIGEST = "ee0506a5fe9ab6450efc43c69aafde2b6212e6ef0c7aa55865231db3e259e79c"


def _grid16(lo, hi):
    # taxonomy.md: "Every 16-value grid is floor(linspace(lo, hi, 16))"; the rounding guards
    # against 0.31 being held as 0.30999...
    return np.floor(np.round(np.linspace(lo, hi, 16), 9)).astype(int).tolist()


def _scale_grid():
    return (np.floor(np.round(np.linspace(15, 95, 16), 9)) / 100).tolist()


KERNELS = list(range(3, 34, 2))
QUALITIES = _grid16(36, 100)
SIZES = _grid16(2, 34)
NOISE = _grid16(3, 35)
INTERPOLATIONS = ("AREA", "CUBIC", "LANCZOS4", "LINEAR", "NEAREST")

# taxonomy.md's table: family, types and the parameter grid of each type.
EXPECTED_TYPES = {
    "BoxBlur": ("blur", KERNELS),
    "GaussianBlur": ("blur", KERNELS),
    "MedianBlur": ("blur", KERNELS),
    "WaveletBlur": ("blur", [3, 5, 7, 9]),
    **{f"{name}Resize": ("resampling", _scale_grid()) for name in INTERPOLATIONS},
    "JPEGCompress": ("compression", QUALITIES),
    "JPEGDoubleCompress": (
        "compression",
        sorted((q1, q2) for q1 in QUALITIES[0::2] for q2 in QUALITIES[1::2]),
    ),
    "WEBPCompress": ("compression", QUALITIES),
    **{f"{op}Morph": ("morphology", SIZES) for op in ("Close", "Dilate", "Erode", "Open")},
    **{name: ("noise", NOISE) for name in ("GaussianNoise", "ImpluseNoise", "PoissonNoise", "UniformNoise")},
    "Quantization": ("quantization", list(range(50, 226, 25))),
    "Dithering": ("quantization", [None]),
    "AutoContrast": ("contrast", list(range(0, 8))),
    "HistEq": ("contrast", list(range(1, 8))),
}


def _raw_rows():
    text = importlib.resources.files("mantra_jax.imc").joinpath("taxonomy.csv").read_text()
    return list(csv.DictReader(io.StringIO(text)))


def test_package_table_is_the_published_one():
    assert taxonomy.table_digest() == PUBLISHED_TABLE_DIGEST


def test_level_constants():
    assert taxonomy.LEVELS == 6
    assert taxonomy.LEVEL_SIZES == (7, 27, 49, 96, 191, 380)
    assert taxonomy.LEVEL_NAMES == ("IMC-7", "IMC-25", "IMC-49", "IMC-96", "IMC-185", "IMC-385")
    for level, name in enumerate(taxonomy.LEVEL_NAMES):
        assert taxonomy.num_classes(level) == taxonomy.num_classes(name) == taxonomy.LEVEL_SIZES[level]
        assert taxonomy.level_index(name) == level


def test_every_node_is_used_at_every_level():
    nodes = np.array([rec.nodes for rec in taxonomy.LEAF_TABLE])
    for level, size in enumerate(taxonomy.LEVEL_SIZES):
        assert sorted(set(nodes[:, level])) == list(range(size))


def test_parameter_grids_and_families_match_the_published_table():
    by_type = collections.defaultdict(list)
    for rec in taxonomy.LEAF_TABLE:
        by_type[rec.type].append(rec)
    assert set(by_type) == set(EXPECTED_TYPES)
    for type_name, (family, grid) in EXPECTED_TYPES.items():
        records = by_type[type_name]
        assert {rec.family for rec in records} == {family}, type_name
        values = [rec.param_value for rec in records]
        assert len(values) == len(set(values)) == len(grid), type_name
        if grid == [None]:
            assert values == [None]
        else:
            assert sorted(values) == sorted(grid), type_name


def test_labels_join_type_and_parameter():
    for rec in taxonomy.LEAF_TABLE:
        assert rec.label == (f"{rec.type}-{rec.param}" if rec.param else rec.type)


def test_double_jpeg_spans_four_level1_nodes_and_types_do_not_mix():
    double = [rec for rec in taxonomy.LEAF_TABLE if rec.type == "JPEGDoubleCompress"]
    assert len({rec.nodes[1] for rec in double}) == 4
    for level in range(1, taxonomy.LEVELS):
        types_per_node = collections.defaultdict(set)
        for rec in taxonomy.LEAF_TABLE:
            types_per_node[rec.nodes[level]].add(rec.type)
        assert all(len(types) == 1 for types in types_per_node.values()), level


def test_leaf_to_level_reads_the_csv_columns():
    columns = ("L1_family", "L2", "L3", "L4", "L5", "leaf")
    rows = _raw_rows()
    leaves = np.arange(len(rows))
    for level, column in enumerate(columns):
        expected = np.array([int(row[column]) - 1 for row in rows])
        np.testing.assert_array_equal(taxonomy.leaf_to_level(leaves, level), expected)
        assert taxonomy.leaf_to_level(17, level) == expected[17]
    shaped = taxonomy.leaf_to_level(leaves.reshape(20, 19), 2)
    assert shaped.shape == (20, 19)


def test_level_map_agrees_with_leaves_and_composes():
    leaves = np.arange(taxonomy.LEVEL_SIZES[-1])
    for src in range(taxonomy.LEVELS):
        for dst in range(src + 1):
            mapping = taxonomy.level_map(src, dst)
            assert mapping.shape == (taxonomy.LEVEL_SIZES[src],)
            np.testing.assert_array_equal(
                mapping[taxonomy.leaf_to_level(leaves, src)], taxonomy.leaf_to_level(leaves, dst)
            )
            for mid in range(dst, src + 1):
                np.testing.assert_array_equal(
                    taxonomy.level_map(mid, dst)[taxonomy.level_map(src, mid)], mapping
                )
    np.testing.assert_array_equal(taxonomy.level_map(3, 3), np.arange(96))


def test_level_matrix_is_one_hot_of_level_map():
    matrix = taxonomy.level_matrix(5, 1)
    assert matrix.dtype == np.float32 and matrix.shape == (380, 27)
    np.testing.assert_array_equal(matrix.sum(axis=1), 1.0)
    np.testing.assert_array_equal(matrix.argmax(axis=1), taxonomy.level_map(5, 1))


def test_class_names_are_unique_and_readable():
    for level in range(taxonomy.LEVELS):
        names = taxonomy.class_names(level)
        assert len(names) == len(set(names)) == taxonomy.LEVEL_SIZES[level]
    assert taxonomy.class_names(0) == list(taxonomy.FAMILY_NAMES)
    assert taxonomy.class_names(5) == [rec.label for rec in taxonomy.LEAF_TABLE]
    level1 = taxonomy.class_names(1)
    assert "BoxBlur" in level1 and "HistEq" in level1
    assert sum(name.startswith("JPEGDoubleCompress:") for name in level1) == 4
    # A level-4 node's name lists exactly its leaves' parameters.
    for node, name in enumerate(taxonomy.class_names(4)):
        members = [rec for rec in taxonomy.LEAF_TABLE if rec.nodes[4] == node]
        if ":" in name:
            assert sorted(name.split(":")[1].split(",")) == sorted(rec.param for rec in members)


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_map_prediction_probs_sums_children():
    rng = np.random.default_rng(0)
    probs = _softmax(rng.normal(size=(4, 3, 380)))
    for dst in range(5):
        mapped = taxonomy.map_prediction(probs, 5, dst, kind="probs")
        assert mapped.shape == (4, 3, taxonomy.LEVEL_SIZES[dst])
        np.testing.assert_allclose(mapped, probs @ taxonomy.level_matrix(5, dst), rtol=1e-12)
        np.testing.assert_allclose(mapped.sum(-1), 1.0, rtol=1e-12)


def test_map_prediction_logits_matches_naive_logsumexp_and_softmax():
    rng = np.random.default_rng(1)
    # A wide spread: naive exp() of these underflows, the grouped maximum must keep every class finite.
    logits = rng.normal(size=(5, 191)) * 400.0
    mapping = taxonomy.level_map(4, 2)
    mapped = taxonomy.map_prediction(logits, 4, 2, kind="logits")
    assert np.isfinite(mapped).all()
    for node in range(taxonomy.LEVEL_SIZES[2]):
        children = logits[:, mapping == node]
        expected = np.logaddexp.reduce(children, axis=-1)
        np.testing.assert_allclose(mapped[:, node], expected, rtol=1e-12)
    moderate = rng.normal(size=(5, 191)) * 3.0
    np.testing.assert_allclose(
        _softmax(taxonomy.map_prediction(moderate, 4, 0, kind="logits")),
        taxonomy.map_prediction(_softmax(moderate), 4, 0, kind="probs"),
        rtol=1e-10,
    )


def test_map_prediction_on_jax_arrays():
    jnp = pytest.importorskip("jax.numpy")
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 380)).astype(np.float32)
    for kind in ("probs", "logits"):
        expected = taxonomy.map_prediction(logits, 5, 1, kind=kind)
        got = taxonomy.map_prediction(jnp.asarray(logits), 5, 1, kind=kind)
        assert not isinstance(got, np.ndarray)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="coarser"):
        taxonomy.level_map(1, 3)
    with pytest.raises(ValueError, match="0..379"):
        taxonomy.leaf_to_level(380, 0)
    with pytest.raises(ValueError, match="level"):
        taxonomy.num_classes(6)
    with pytest.raises(ValueError, match="IMC-12"):
        taxonomy.num_classes("IMC-12")
    with pytest.raises(ValueError, match="96 classes"):
        taxonomy.map_prediction(np.zeros((2, 96)), 4, 0)
    with pytest.raises(ValueError, match="kind"):
        taxonomy.map_prediction(np.zeros((2, 380)), 5, 0, kind="softmax")
