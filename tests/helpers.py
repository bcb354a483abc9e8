"""Shared test helpers: synthetic photo folders, random networks drawn in numpy, batch comparison,
the resume checks every grain stream must pass, a lock held by another process, and index.html
parsed back."""
import contextlib
import html.parser
import json
import subprocess
import sys
import urllib.parse
from pathlib import Path

import cv2
import jax
import numpy as np

from mantra_jax.data import photos
from mantra_jax.nn import model


def write_photo_folder(root, wanted, *, height=256, width=256, subfolders=0, seed=0):
    """Writes PNG noise photos into `root` until each split of `wanted` ({"train": 2, ...}) has its
    count; with `subfolders` > 0 the photos are spread over cam0/, cam1/, ... Returns `root`."""
    rng = np.random.default_rng(seed)
    wanted, i = dict(wanted), 0
    while any(wanted.values()):
        name = f"cam{i % subfolders}/p{i:03d}.png" if subfolders else f"p{i:03d}.png"
        i += 1
        split = photos.split_of(name)
        if wanted.get(split, 0) == 0:
            continue
        wanted[split] -= 1
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        ok, encoded = cv2.imencode(".png", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        assert ok
        (root / name).write_bytes(encoded.tobytes())
    return root


def random_variables(cfg, seed):
    """A random network of cfg's shapes, drawn in numpy (model.init costs seconds of compilation)."""
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), cfg))

    def draw(leaf):  # He-scaled kernels and small biases keep the features input-dependent
        fan_in = int(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 1e4
        return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return jax.tree.map(draw, abstract)


def take_batches(iterator, n):
    """The next n batches, copied out of grain's shared-memory arrays so nothing outlives the iterator."""
    return [{k: np.array(v) for k, v in next(iterator).items()} for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _saved_state(iterator):
    """The iterator's state as the JSON text a checkpoint keeps of it."""
    return json.dumps(iterator.get_state())


def assert_restore_continues_the_stream(make_dataset):
    """A fresh iterator restored from a saved state yields what the saved one yields next."""
    uninterrupted = iter(make_dataset())
    take_batches(uninterrupted, 3)
    saved = _saved_state(uninterrupted)
    expected = take_batches(uninterrupted, 2)
    resumed = iter(make_dataset())
    resumed.set_state(json.loads(saved))
    assert_same_batches(take_batches(resumed, 2), expected)


def assert_workers_change_nothing(make_dataset):
    """make_dataset(worker_count) gives the same batches with 0 and 2 grain workers, and a
    2-worker stream resumed from its saved state continues where it stopped."""

    def run(workers, n, state=None):
        iterator = iter(make_dataset(workers))
        if state is not None:
            iterator.set_state(json.loads(state))
        batches = take_batches(iterator, n)
        state_after = _saved_state(iterator)
        if hasattr(iterator, "close"):
            iterator.close()
        return batches, state_after

    in_process, _ = run(0, 5)
    with_workers, state = run(2, 3)
    assert_same_batches(with_workers, in_process[:3])
    resumed, _ = run(2, 2, state)
    assert_same_batches(resumed, in_process[3:5])


@contextlib.contextmanager
def hold_lock(folder):
    """Another live process holds mantra_jax.workdir.lock(folder) inside the block; yields its pid."""
    code = ("import sys, time; from mantra_jax import workdir\n"
            "with workdir.lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


class PageParser(html.parser.HTMLParser):
    """Rows of the images table (their cells' text, links and image sources), skipped rows, and
    every href/src of the page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows, self.skipped, self.links = [], [], []
        self._row, self._cell = None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and attrs.get("class") in ("image", "skip"):
            self._row = {"kind": attrs["class"], "text": [], "href": [], "src": []}
        if tag == "td" and self._row is not None:
            self._cell = []
        for name in ("href", "src"):
            if name in attrs and not attrs[name].startswith("#"):
                self.links.append(attrs[name])
                if self._row is not None:
                    self._row[name].append(attrs[name])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            text = "".join(self._cell).strip()  # a cell's text, whatever <wbr> or <sup> split it
            if text:
                self._row["text"].append(text)
            self._cell = None
        if tag == "tr" and self._row is not None:
            (self.rows if self._row["kind"] == "image" else self.skipped).append(self._row)
            self._row = None


def parse_page(path) -> PageParser:
    """An index.html (mantra_jax/metrics/pages.py) parsed back."""
    page = PageParser()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def resolve_link(folder, link) -> Path:
    assert "://" not in link and not link.startswith("/")  # relative: nothing fetched from anywhere
    return (folder / urllib.parse.unquote(link)).resolve()


def check_page(folder, n_rows: int, skipped_files=()) -> PageParser:
    """folder/index.html has `n_rows` image rows, every link and image source is a file, and the
    skipped table lists exactly `skipped_files` (paths, each row with a reason)."""
    page = parse_page(Path(folder) / "index.html")
    assert len(page.rows) == n_rows
    for link in page.links:
        assert resolve_link(Path(folder), link).is_file(), link
    assert sorted(row["text"][0] for row in page.skipped) == sorted(map(str, skipped_files))
    assert all(len(row["text"]) == 2 and row["text"][1] for row in page.skipped)
    return page
