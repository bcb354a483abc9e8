"""index.html: parsed back, every link resolves, one row per image, orders, thumbnails, skipped files."""
from pathlib import Path

import cv2
import numpy as np

from mantra_jax.metrics import pages
from tests.helpers import parse_page, resolve_link


def _png(path, height, width, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.write_bytes(cv2.imencode(".png", image)[1].tobytes())
    return path


def test_the_pages_link_every_image_sort_by_score_and_list_the_skipped(tmp_path):
    out, inputs = tmp_path / "out", tmp_path / "in put"
    names = ["a photo #1.png", "été ß?.png", "plain.png"]
    scores = [0.2, 0.9, None]
    page = pages.RunPage(out, title="predict <test> & co", value_columns=["AUC"])
    for i, (name, score) in enumerate(zip(names, scores)):
        photo = _png(inputs / name, 600 if i == 0 else 40, 400 if i == 0 else 30, seed=i)
        stem = Path(name).stem
        page.add(pages.PageRow(str(photo), {"photo": photo, "mask": _png(out / f"{stem}_mask.png", 40, 30),
                                            "trace": (out / f"{stem}_trace_L1.png") if i == 1 else None},
                               score=score, values={"AUC": 0.5 + i / 10}))
    _png(out / "été ß?_trace_L1.png", 40, 30)
    page.skip(inputs / "broken #2.jpg", "not a readable image <truncated>")
    page.set_headline({"F1": 0.25, "AUC": 0.75}, figures=[_png(out / "roc curve.png", 30, 40)])
    index = page.write()
    assert index == out / "index.html"

    for name, (_, key, descending) in pages.PAGES.items():
        parsed = parse_page(out / name)
        for link in parsed.links:
            assert resolve_link(out, link).is_file(), link
        assert len(parsed.rows) == 3
        shown = [row["text"][1] for row in parsed.rows]
        if name == "index.html":
            assert shown == [str(inputs / names[1]), str(inputs / names[0]), str(inputs / names[2])]
        elif key == "score":
            assert shown == [str(inputs / names[0]), str(inputs / names[1]), str(inputs / names[2])]
        else:
            assert shown == sorted(shown)
        assert [s["text"] for s in parsed.skipped] == [[str(inputs / "broken #2.jpg"), "not a readable image <truncated>"]]
        # The other orders are linked from each page.
        assert set(pages.PAGES) - {name} <= set(parsed.links)

    parsed = parse_page(index)
    first = parsed.rows[1]  # "a photo #1.png": 600 x 400, shown through a thumbnail
    photo_link, photo_src = first["href"][0], first["src"][0]
    assert "%23" in photo_link and "%20" in photo_link and "#" not in photo_link
    assert resolve_link(out, photo_link) == (inputs / names[0]).resolve()
    thumb = resolve_link(out, photo_src)
    assert thumb.parent == (out / pages.THUMBS_DIR).resolve()
    assert max(cv2.imdecode(np.fromfile(thumb, np.uint8), 1).shape[:2]) == pages.THUMB_MAX_SIDE
    small = parsed.rows[0]  # small images are shown as they are
    assert small["href"][:2] == small["src"][:2]
    assert resolve_link(out, small["src"][2]) == (out / "été ß?_trace_L1.png").resolve()
    assert len(parsed.rows[2]["src"]) == 2  # no trace for this one: an empty cell
    text = index.read_text(encoding="utf-8")
    assert "predict &lt;test&gt; &amp; co" in text and "<script" not in text and "0.7500" in text
    assert not list(out.glob(".*.tmp"))  # written through temporary files, moved into place


def test_the_page_is_rewritten_as_the_run_goes_and_marks_missing_images(tmp_path):
    page = pages.RunPage(tmp_path, title="run")
    page.add(pages.PageRow("one", {"mask": _png(tmp_path / "one_mask.png", 8, 8)}, score=0.1))
    assert len(parse_page(page.write(refresh_seconds=30)).rows) == 1
    assert 'http-equiv="refresh"' in (tmp_path / "index.html").read_text()
    page.add(pages.PageRow("two", {"mask": tmp_path / "two_mask.png"}, score=0.3))  # not written
    parsed = parse_page(page.write())
    assert len(parsed.rows) == 2 and "refresh" not in (tmp_path / "index.html").read_text()
    assert parsed.rows[0]["src"] == [] and "mask: missing or unreadable" in parsed.rows[0]["text"]
    for link in parsed.links:
        assert resolve_link(tmp_path, link).is_file()


def test_the_table_fits_a_screen_with_the_longest_class_names_and_notes_show(tmp_path):
    """No text cell holds an unbroken run longer than pages.CELL_MAX_CHARS (+ its footnote mark):
    long class names are cut with a footnote that gives them whole, file names break at their
    separators; a model-card note and an HTML legend are shown."""
    import html as html_lib
    import re

    from mantra_jax.imc import taxonomy

    out = tmp_path / "out"
    longest = [max(taxonomy.class_names(level), key=len) for level in range(6)]
    assert max(map(len, longest)) > 2 * pages.CELL_MAX_CHARS  # what the page must cope with
    page = pages.RunPage(out, title="predict")
    deep = tmp_path / "a_very_long_folder_name_without_spaces" / "another_long_folder_name" / "photo_0001_final.png"
    for i, name in enumerate(longest):
        page.add(pages.PageRow(str(deep.with_name(f"photo_{i}.png")), {}, score=i / 10,
                               values={"dominant class": name, "its share": 0.5}))
    page.add_note("Not a forensic tool: a test note.")
    page.set_legend("Trace legend", [(name, (255, 0, 0), 0.1) for name in longest])
    text = page.write().read_text(encoding="utf-8")

    parsed = parse_page(out / "index.html")
    for row in parsed.rows:
        _, name_cell, _, class_cell, share_cell = row["text"]
        assert max(len(word) for word in class_cell.split()) <= pages.CELL_MAX_CHARS + len("[9]")
    cells = re.findall(r'<td class="name">(.*?)</td>', text)
    assert len(cells) == len(longest)
    for cell in cells:  # break opportunities: no run longer than a folder name between them
        assert max(len(html_lib.unescape(part)) for part in cell.split("<wbr>")) <= 40
    for name in longest:  # the whole name is on the page, in a footnote (or in its cell when short)
        assert html_lib.escape(name) in text
    assert '<p class="note">Not a forensic tool: a test note.</p>' in text
    assert text.count('<span class="swatch"') == len(longest)
    assert "max-width: 200px" in text  # four image columns and the text columns fit 1,400 pixels


def test_relative_paths_are_the_command_lines_not_the_page_folders(tmp_path, monkeypatch):
    """`predict --out try_it photos/a.png` run from some folder: every image shows."""
    monkeypatch.chdir(tmp_path)
    _png(Path("photos") / "a.png", 8, 8)
    _png(Path("try_it") / "a_mask.png", 8, 8)
    page = pages.RunPage(Path("try_it"), title="relative")
    page.add(pages.PageRow("photos/a.png", {"photo": Path("photos/a.png"), "mask": Path("try_it/a_mask.png")}))
    page.set_headline({}, figures=[_png(Path("try_it") / "bar.png", 4, 8)])
    text = page.write().read_text(encoding="utf-8")
    assert "missing or unreadable" not in text
    parsed = parse_page(tmp_path / "try_it" / "index.html")
    assert len(parsed.rows[0]["src"]) == 2
    for link in parsed.links:
        assert resolve_link(tmp_path / "try_it", link).is_file(), link
