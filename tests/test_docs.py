"""docs/api.md: every ```python block runs, in order and in one namespace, from the repository root
(as a reader would paste them into one session), so that the page cannot go stale. A block marked
`<!-- checked, not run -->` (a training run) has its imports run and each call of a function it
imported bound to that function's signature, so that renamed functions or arguments fail here."""
import ast
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "api.md"
NOT_RUN = "<!-- checked, not run -->"


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(first line number, source, whether it runs) of each ```python block."""
    return [(text[:m.start(2)].count("\n") + 1, m.group(2), m.group(1) is None)
            for m in re.finditer(r"^(" + re.escape(NOT_RUN) + r"\n)?```python\n(.*?)^```$", text, re.M | re.S)]


def _dotted(node):
    """'a.b.c' of a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id] + parts[::-1]) if isinstance(node, ast.Name) else None


def check_without_running(source: str, namespace: dict, where: str):
    """Runs the block's imports, then binds every call of an imported name to its signature."""
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            exec(compile(ast.Module([node], []), where, "exec"), namespace)  # noqa: S102
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or (name := _dotted(node.func)) is None or name.split(".")[0] not in namespace:
            continue
        target = namespace[name.split(".")[0]]
        for attribute in name.split(".")[1:]:
            assert hasattr(target, attribute), f"{where}: {name} does not exist"
            target = getattr(target, attribute)
        if callable(target) and not any(isinstance(a, ast.Starred) for a in node.args):
            keywords = {k.arg: None for k in node.keywords if k.arg is not None}
            inspect.signature(target).bind_partial(*[None] * len(node.args), **keywords)


def test_the_page_has_examples_of_every_part():
    blocks = "\n".join(source for _, source, _ in python_blocks(PAGE.read_text()))
    for name in ("Predictor", "Tracer", "model.apply", "model.project", "ManTraNet", "Featex", "evaluate_checkpoint",
                 "make_train_dataset", "loop.train"):
        assert name in blocks, name


def test_every_example_of_the_api_page_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the bundled photos and patch index
    namespace: dict = {"__name__": "api_md"}
    blocks = python_blocks(PAGE.read_text())
    assert sum(not runs for _, _, runs in blocks) == 1  # only the training run is left out
    for line, source, runs in blocks:
        where = f"docs/api.md, the block at line {line}"
        try:
            if runs:
                exec(compile(source, where, "exec"), namespace)  # noqa: S102 - the page's own examples
            else:
                check_without_running(source, namespace, where)
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{where}: {type(e).__name__}: {e}")


def test_a_renamed_argument_in_a_block_not_run_is_caught():
    namespace: dict = {}
    check_without_running("from mantra_jax.train import loop\nloop.LoopConfig(workdir='w', epochs=1)\n", namespace, "ok")
    with pytest.raises(TypeError):
        check_without_running("from mantra_jax.train import loop\nloop.LoopConfig(workdir='w', epoch=1)\n", namespace, "x")
    with pytest.raises(AssertionError):
        check_without_running("from mantra_jax.train import loop\nloop.trains(1)\n", namespace, "x")
