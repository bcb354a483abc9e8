"""The IMC manipulation taxonomy: 380 leaf classes and their nodes at five coarser levels.

The image manipulation classification (IMC) pretraining task predicts which manipulation was
applied to a patch. Its classes are the authors' published hierarchy figure, held here as the
package's own table `taxonomy.csv` (a verbatim copy of the published one). This module reads it
once, checks it, and maps leaves and predictions between levels.

Levels are 0-based: level 0 holds the 7 families, level 5 the 380 leaves (the paper's HL0..HL5).
The paper calls the levels IMC-7 ... IMC-385 although the figure's real class counts are
7 / 27 / 49 / 96 / 191 / 380; `LEVEL_NAMES` keeps the paper's names, `LEVEL_SIZES` the real counts.
Node ids are 0-based everywhere (CSV value - 1).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.resources
import io
from typing import Any, NamedTuple, Sequence

import numpy as np

LEVELS = 6
LEVEL_SIZES = (7, 27, 49, 96, 191, 380)
LEVEL_NAMES = ("IMC-7", "IMC-25", "IMC-49", "IMC-96", "IMC-185", "IMC-385")
# What report tables say next to the names, so that "IMC-25" with 27 classes reads as intended.
LEVEL_NAMES_NOTE = (
    "Level names are the paper's (IMC-7 ... IMC-385); class counts are this taxonomy's, a copy of the "
    "paper's published hierarchy figure, which has " + " / ".join(map(str, LEVEL_SIZES)) + " classes "
    "at levels 0-5 (so IMC-25 has 27 classes, IMC-185 has 191 and IMC-385 has 380).")
LEAF_LEVEL = LEVELS - 1

# The CSV numbers the families 1..7; their names come from taxonomy.md.
FAMILY_NAMES = (
    "blur",
    "resampling",
    "compression",
    "morphology",
    "noise",
    "quantization",
    "contrast",
)

_CSV_NAME = "taxonomy.csv"
_CSV_COLUMNS = ("leaf", "label", "type", "param", "L1_family", "L2", "L3", "L4", "L5")


class LeafRecord(NamedTuple):
    """One row of the taxonomy, with 0-based ids."""

    leaf: int  # 0..379
    label: str  # as printed in the figure, e.g. "JPEGDoubleCompress-Q95/40"
    type: str  # e.g. "JPEGDoubleCompress" (the level-1 grouping, sic spellings kept)
    param: str  # as printed, e.g. "Q95/40"; "" for Dithering
    param_value: Any  # parsed: int, float, (q1, q2) tuple, or None for Dithering
    family: str  # one of FAMILY_NAMES
    nodes: tuple[int, ...]  # node id at levels 0..5 (nodes[5] == leaf)


def parse_param(param: str) -> Any:
    """Parses a printed parameter: 'K29' -> 29, 's0.95' -> 0.95, 'Q95/40' -> (95, 40), '' -> None."""
    if param == "":
        return None
    body = param[1:]
    if "/" in body:
        return tuple(int(q) for q in body.split("/"))
    if "." in body:
        return float(body)
    return int(body)


def _read_csv_text() -> tuple[str, str]:
    resource = importlib.resources.files(__package__).joinpath(_CSV_NAME)
    return str(resource), resource.read_text(encoding="utf-8")


def _parse_table(where: str, text: str) -> tuple[LeafRecord, ...]:
    reader = csv.reader(io.StringIO(text))
    header = tuple(next(reader))
    if header != _CSV_COLUMNS:
        raise ValueError(f"{where}: expected columns {_CSV_COLUMNS}, got {header}")
    records = []
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(_CSV_COLUMNS):
            raise ValueError(f"{where}:{line_no}: expected {len(_CSV_COLUMNS)} fields, got {row}")
        leaf_1, label, type_name, param = int(row[0]), row[1], row[2], row[3]
        coarse_1 = [int(v) for v in row[4:]]
        if leaf_1 != len(records) + 1:
            raise ValueError(f"{where}:{line_no}: leaves must be numbered 1..N in order, got {leaf_1}")
        nodes = tuple(v - 1 for v in coarse_1) + (leaf_1 - 1,)
        for level, node in enumerate(nodes):
            if not 0 <= node < LEVEL_SIZES[level]:
                raise ValueError(
                    f"{where}:{line_no}: level {level} node {node + 1} outside 1..{LEVEL_SIZES[level]}"
                )
        records.append(
            LeafRecord(
                leaf=leaf_1 - 1,
                label=label,
                type=type_name,
                param=param,
                param_value=parse_param(param),
                family=FAMILY_NAMES[nodes[0]],
                nodes=nodes,
            )
        )
    if len(records) != LEVEL_SIZES[-1]:
        raise ValueError(f"{where}: expected {LEVEL_SIZES[-1]} leaves, got {len(records)}")
    return tuple(records)


def _parent_maps(where: str, records: Sequence[LeafRecord]) -> tuple[np.ndarray, ...]:
    """parents[l] maps a node at level l+1 to its node at level l; checks one parent per node."""
    parents = []
    for level in range(LEVELS - 1):
        parent = np.full(LEVEL_SIZES[level + 1], -1, dtype=np.int64)
        for rec in records:
            child, par = rec.nodes[level + 1], rec.nodes[level]
            if parent[child] not in (-1, par):
                raise ValueError(
                    f"{where}: level {level + 1} node {child + 1} has two parents at level {level}"
                    f" ({parent[child] + 1} and {par + 1})"
                )
            parent[child] = par
        if (parent < 0).any():
            missing = np.flatnonzero(parent < 0) + 1
            raise ValueError(f"{where}: level {level + 1} nodes {missing.tolist()} hold no leaf")
        if len(np.unique(parent)) != LEVEL_SIZES[level]:
            raise ValueError(f"{where}: some level {level} nodes have no children")
        parents.append(parent)
    return tuple(parents)


_WHERE, _TEXT = _read_csv_text()
LEAF_TABLE: tuple[LeafRecord, ...] = _parse_table(_WHERE, _TEXT)
_PARENTS = _parent_maps(_WHERE, LEAF_TABLE)
# _LEAF_NODES[level][leaf] is the leaf's node at `level` (read-only).
_LEAF_NODES = np.array([rec.nodes for rec in LEAF_TABLE], dtype=np.int64).T.copy()
_LEAF_NODES.setflags(write=False)


def table_digest() -> str:
    """sha256 of the table's cells (independent of line endings), to pin the published table."""
    rows = csv.reader(io.StringIO(_TEXT))
    canonical = "\n".join(",".join(cell.strip() for cell in row) for row in rows if row)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def level_index(level: int | str) -> int:
    """Accepts 0..5 or a paper name ("IMC-385") and returns the 0-based level."""
    if isinstance(level, str):
        if level not in LEVEL_NAMES:
            raise ValueError(f"unknown level name {level!r}; expected one of {LEVEL_NAMES}")
        return LEVEL_NAMES.index(level)
    level_int = int(level)
    if level_int != level or not 0 <= level_int < LEVELS:
        raise ValueError(f"level must be an integer in 0..{LEVELS - 1} or a name in {LEVEL_NAMES}, got {level!r}")
    return level_int


def num_classes(level: int | str) -> int:
    return LEVEL_SIZES[level_index(level)]


def _node_name(level: int, members: list[LeafRecord]) -> str:
    type_name = members[0].type
    whole_type = sum(rec.type == type_name for rec in LEAF_TABLE)
    if level == 0:
        return members[0].family
    if level == LEAF_LEVEL:
        return members[0].label
    if len(members) == whole_type:
        return type_name
    # The fine levels group parameters by similarity (not by range), so list them.
    ordered = sorted(members, key=lambda rec: rec.param_value)
    return f"{type_name}:" + ",".join(rec.param for rec in ordered)


def _class_names_table() -> tuple[tuple[str, ...], ...]:
    names = []
    for level in range(LEVELS):
        members: list[list[LeafRecord]] = [[] for _ in range(LEVEL_SIZES[level])]
        for rec in LEAF_TABLE:
            members[rec.nodes[level]].append(rec)
        names.append(tuple(_node_name(level, group) for group in members))
    return tuple(names)


_CLASS_NAMES = _class_names_table()


def class_names(level: int | str) -> list[str]:
    """Readable, unique names of the classes at `level`.

    Level 0: family names; level 5: leaf labels; levels 1-4: the type name when the node holds a
    whole type, else "Type:param,param,..." listing its leaves' parameters in increasing order.
    """
    return list(_CLASS_NAMES[level_index(level)])


def leaf_to_level(leaf_ids, level: int | str) -> np.ndarray:
    """Maps 0-based leaf ids (int or integer array, any shape) to 0-based node ids at `level`."""
    ids = np.asarray(leaf_ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"leaf ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= LEVEL_SIZES[-1]):
        raise ValueError(f"leaf ids must lie in 0..{LEVEL_SIZES[-1] - 1}, got range {ids.min()}..{ids.max()}")
    return _LEAF_NODES[level_index(level)][ids]


def level_map(from_level: int | str, to_level: int | str) -> np.ndarray:
    """Parent index at `to_level` of every class at `from_level`, shape (num_classes(from_level),)."""
    src, dst = level_index(from_level), level_index(to_level)
    if dst > src:
        raise ValueError(f"can only map to a coarser level: to_level {dst} > from_level {src}")
    mapping = np.arange(LEVEL_SIZES[src], dtype=np.int64)
    for level in range(src - 1, dst - 1, -1):
        mapping = _PARENTS[level][mapping]
    return mapping


def level_matrix(from_level: int | str, to_level: int | str) -> np.ndarray:
    """0/1 float32 matrix (n_from, n_to) with M[i, parent(i)] = 1, so probs_to = probs_from @ M."""
    mapping = level_map(from_level, to_level)
    matrix = np.zeros((len(mapping), num_classes(to_level)), dtype=np.float32)
    matrix[np.arange(len(mapping)), mapping] = 1.0
    return matrix


def _is_jax_array(x) -> bool:
    module = type(x).__module__
    return module.startswith("jax") or module.startswith("jaxlib")


def map_prediction(pred, from_level: int | str, to_level: int | str, kind: str = "probs"):
    """Maps predictions along the last axis from `from_level` to the coarser `to_level`.

    kind="probs": a parent's probability is the sum of its children's.
    kind="logits": a parent's logit is the logsumexp of its children's, so that the softmax of the
    result equals the mapped softmax probabilities. numpy in, numpy out; jax arrays stay jax arrays.
    """
    if kind not in ("probs", "logits"):
        raise ValueError(f"kind must be 'probs' or 'logits', got {kind!r}")
    parents = level_map(from_level, to_level)
    n_from, n_to = len(parents), num_classes(to_level)
    if pred.shape[-1] != n_from:
        raise ValueError(
            f"prediction's last axis has {pred.shape[-1]} classes; level {level_index(from_level)} has {n_from}"
        )
    if _is_jax_array(pred):
        return _map_prediction_jax(pred, parents, n_to, kind)
    pred = np.asarray(pred)
    # Group the children of each parent into contiguous runs so that reduceat can sum them.
    order = np.argsort(parents, kind="stable")
    counts = np.bincount(parents, minlength=n_to)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    grouped = pred[..., order]
    if kind == "probs":
        return np.add.reduceat(grouped, starts, axis=-1)
    # Subtract each group's own maximum so that no group underflows to -inf.
    group_max = np.maximum.reduceat(grouped, starts, axis=-1)
    group_max = np.where(np.isfinite(group_max), group_max, 0).astype(grouped.dtype)
    shifted = grouped - np.repeat(group_max, counts, axis=-1)
    with np.errstate(divide="ignore"):
        return np.log(np.add.reduceat(np.exp(shifted), starts, axis=-1)) + group_max


def _map_prediction_jax(pred, parents: np.ndarray, n_to: int, kind: str):
    import jax
    import jax.numpy as jnp

    classes_first = jnp.moveaxis(pred, -1, 0)
    if kind == "probs":
        out = jax.ops.segment_sum(classes_first, parents, num_segments=n_to)
    else:
        group_max = jax.ops.segment_max(classes_first, parents, num_segments=n_to)
        group_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(group_max), group_max, 0))
        summed = jax.ops.segment_sum(jnp.exp(classes_first - group_max[parents]), parents, num_segments=n_to)
        out = jnp.log(summed) + group_max
    return jnp.moveaxis(out, 0, -1)
