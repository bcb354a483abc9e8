"""One page per run: index.html, every image of a predict or evaluate output folder at a glance.

    page = RunPage(out, title="predict: runs/mantranet on photos/")
    for each image:
        page.add(PageRow(str(path), {"photo": path, "overlay": out / f"{stem}_overlay.png", ...}, score=s))
        page.write()                                  # rewritten as the run goes (atomically)
    page.skip(path, reason); page.set_headline({...}, figures=[out / "roc.png"]); page.write()

Self-contained and readable without JavaScript: plain HTML with an inline style sheet, relative
links to the PNGs the run already wrote (and to the input photos, wherever they lie), nothing
fetched from anywhere. Sorting without a script: the same rows are written in three orders, each
page linking to the others (`PAGES`): index.html by score, highest first (the likeliest forgeries
at the top); index_score_ascending.html, lowest first; index_by_name.html, by file name. Rows
without a score (trace-only runs) come last, by name.

Images larger than `thumb_max_side` pixels on a side are shown through a JPEG thumbnail written
once under thumbs/ (and rewritten when its source is newer), linking to the full image, so that a
page of 1,000 rows opens quickly; `loading="lazy"` defers the rows below the fold. Paths are
percent-encoded in href/src (urllib.parse.quote: spaces, "#", "?", unicode) and HTML-escaped in
text. Each page is written to a temporary file and moved into place (os.replace), so a reader
never sees half a page.
"""
from __future__ import annotations

import dataclasses
import html
import math
import os
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import cv2

from mantra_jax.data import images

# file name -> (heading, sort key name, descending)
PAGES = {
    "index.html": ("score, highest first", "score", True),
    "index_score_ascending.html": ("score, lowest first", "score", False),
    "index_by_name.html": ("file name", "name", False),
}
THUMBS_DIR = "thumbs"
THUMB_MAX_SIDE = 256
THUMB_JPEG_QUALITY = 85

# Cell texts longer than this are cut with an ellipsis and a footnote that gives them whole (e.g.
# the level-1 class "JPEGDoubleCompress:Q36/74,Q53/40,..."), so that no text cell pushes the
# images off a 1,400-pixel screen; file names wrap anywhere instead.
CELL_MAX_CHARS = 24

_STYLE = """
body { font-family: sans-serif; margin: 1em; max-width: 100%; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 4px; vertical-align: top; text-align: left; overflow-wrap: anywhere; }
td.num { text-align: right; font-variant-numeric: tabular-nums; overflow-wrap: normal; white-space: nowrap; }
table.images img { max-width: 200px; max-height: 200px; }
img.figure { max-width: 640px; max-height: 360px; }
.name { min-width: 8em; max-width: 14em; overflow-wrap: anywhere; }
td.value { max-width: 14em; }
nav b, nav a { margin-right: 1em; }
p.note { background: #fff3cd; border: 1px solid #e0c060; padding: 0.5em; max-width: 60em; }
ul.legend { list-style: none; padding: 0; columns: 18em; max-width: 100%; }
ul.legend li { margin: 2px 0; break-inside: avoid; overflow-wrap: anywhere; }
.swatch { display: inline-block; width: 1em; height: 1em; border: 1px solid #888; vertical-align: middle;
          margin-right: 0.4em; }
ol.footnotes { font-size: 0.9em; }
"""


@dataclasses.dataclass
class PageRow:
    """One image: `name` as shown (its input path); `images`, column -> image file (absolute, or
    relative to the current directory, as given on the command line; None: an empty cell);
    `score`, the image score; `values`, further columns (evaluate: per-image AUC and F1; a trace:
    its dominant class)."""

    name: str
    images: Mapping[str, Any]
    score: Optional[float] = None
    values: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def href(target: Path, folder: Path) -> str:
    """The link from a page in `folder` to `target`: relative and percent-encoded, as an
    HTML-escaped attribute value."""
    try:
        rel = Path(os.path.relpath(target, folder)).as_posix()
        url = urllib.parse.quote(rel, errors="surrogateescape")  # a name that is not UTF-8: its bytes
    except ValueError:  # another drive (Windows): no relative path exists
        url = target.absolute().as_uri()
    return html.escape(url, quote=True)


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4f}"
    return str(value)


class _Footnotes:
    """Long cell texts of one page: each cut to CELL_MAX_CHARS with a numbered footnote."""

    def __init__(self):
        self.texts: list[str] = []

    def cell(self, value) -> str:
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if numeric:
            return '<td class="num">' + html.escape(_format(value)) + "</td>"
        text = _format(value)
        if len(text) <= CELL_MAX_CHARS:
            return '<td class="value">' + html.escape(text) + "</td>"
        if text not in self.texts:
            self.texts.append(text)
        n = self.texts.index(text) + 1
        return (f'<td class="value" title="{html.escape(text, quote=True)}">'
                f'{html.escape(text[: CELL_MAX_CHARS - 1])}&hellip;<sup><a href="#note{n}">[{n}]</a></sup></td>')

    def html(self) -> list[str]:
        if not self.texts:
            return []
        return (['<ol class="footnotes">']
                + [f'<li id="note{n}">{html.escape(t)}</li>' for n, t in enumerate(self.texts, start=1)] + ["</ol>"])


def _name_html(name: str) -> str:
    """A file name, HTML-escaped, with break opportunities after its separators."""
    return re.sub(r"([/\\_.-])", r"\1<wbr>", html.escape(name))


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class RunPage:
    """The index pages of one output folder, kept in memory and rewritten by `write`."""

    def __init__(self, folder, *, title: str, image_columns: Optional[Sequence[str]] = None,
                 value_columns: Optional[Sequence[str]] = None, thumb_max_side: int = THUMB_MAX_SIDE):
        """`image_columns`, `value_columns`: the columns in order (default: in order of first
        appearance among the rows)."""
        self.folder = Path(folder)
        self.title = title
        self.image_columns = list(image_columns) if image_columns is not None else None
        self.value_columns = list(value_columns) if value_columns is not None else None
        self.thumb_max_side = int(thumb_max_side)
        self.rows: list[PageRow] = []
        self.skipped: list[tuple[str, str]] = []
        self.headline: dict = {}
        self.figures: list[Path] = []
        self.notes: list[str] = []
        self.legend: Optional[tuple[str, list, Optional[Path]]] = None
        self._shown: dict = {}  # (source, mtime_ns, size) -> the file to show (itself or its thumbnail)
        self._thumb_names: dict = {}  # thumbnail name -> its source

    def add(self, row: PageRow) -> None:
        self.rows.append(row)

    def skip(self, file, reason: str) -> None:
        self.skipped.append((str(file), str(reason)))

    def set_headline(self, numbers: Mapping[str, Any], figures: Sequence = ()) -> None:
        """evaluate: the report's headline numbers and curve images, shown above the rows."""
        self.headline = dict(numbers)
        self.figures = [self._path(f) for f in figures]

    def add_note(self, text: str) -> None:
        """A note shown above everything (e.g. that the model's card says it is no forensic tool)."""
        if text not in self.notes:
            self.notes.append(text)

    def set_legend(self, title: str, entries: Sequence[tuple[str, Sequence[int], Optional[float]]],
                   full_legend=None) -> None:
        """A colour legend in HTML (readable at any width, unlike a shrunk image): (name, RGB
        colour, share or None) per entry; `full_legend`, an image file with every class, linked."""
        self.legend = (title, list(entries), None if full_legend is None else self._path(full_legend))

    # ---------------------------------------------------------------------------------------
    def _path(self, p) -> Path:
        return Path(p).absolute()  # a relative path is the caller's (the command line's), not the page folder's

    def _columns(self, attribute: str, given):
        if given is not None:
            return given
        seen: dict = {}
        for row in self.rows:
            seen.update(dict.fromkeys(getattr(row, attribute)))
        return list(seen)

    def _thumbnail_path(self, source: Path) -> Path:
        try:
            rel = Path(os.path.relpath(source, self.folder)).as_posix()
        except ValueError:
            rel = source.name
        stem = rel.replace("../", "up_").replace("/", "__")
        name, n = f"{stem}.jpg", 1
        while self._thumb_names.setdefault(name, source) != source:
            n += 1
            name = f"{stem}-{n}.jpg"
        return self.folder / THUMBS_DIR / name

    def _shown_file(self, source: Path) -> Optional[Path]:
        """The file an img tag shows for `source`: itself when small, else its thumbnail (made
        when missing or older than the source); None when the source cannot be read."""
        try:
            stat = source.stat()
        except OSError:
            return None
        key = (source, stat.st_mtime_ns, stat.st_size)
        if key not in self._shown:
            self._shown[key] = self._make_shown(source, stat)
        return self._shown[key]

    def _make_shown(self, source: Path, stat) -> Optional[Path]:
        thumb = self._thumbnail_path(source)
        if thumb.exists() and thumb.stat().st_mtime_ns >= stat.st_mtime_ns:
            return thumb
        try:
            data = source.read_bytes()
            size = images.header_size(data)
            rgb = None
            if size is None:
                rgb = images.decode_rgb(data, name=str(source))
                size = rgb.shape[:2]
            if max(size) <= self.thumb_max_side:
                return source
            if rgb is None:
                rgb = images.decode_rgb(data, name=str(source))
        except (OSError, images.ImageReadError):
            return None
        scale = self.thumb_max_side / max(rgb.shape[:2])
        small = cv2.resize(rgb, (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                                   (cv2.IMWRITE_JPEG_QUALITY, THUMB_JPEG_QUALITY))
        if not ok:
            return None
        thumb.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(thumb, encoded.tobytes())
        return thumb

    def _image_cell(self, label: str, image) -> str:
        if image is None:
            return "<td></td>"
        source = self._path(image)
        shown = self._shown_file(source)
        if shown is None:
            return f"<td>{html.escape(label)}: missing or unreadable</td>"
        return (f'<td><a href="{href(source, self.folder)}"><img src="{href(shown, self.folder)}" '
                f'alt="{html.escape(label, quote=True)}" loading="lazy"></a></td>')

    def _sorted(self, key: str, descending: bool) -> list[PageRow]:
        by_name = sorted(self.rows, key=lambda r: r.name)
        if key == "name":
            return by_name
        scored = [r for r in by_name if r.score is not None and not math.isnan(r.score)]
        unscored = [r for r in by_name if r.score is None or math.isnan(r.score)]
        return sorted(scored, key=lambda r: r.score, reverse=descending) + unscored

    def _page(self, page_name: str, refresh_seconds: Optional[int]) -> str:
        heading, key, descending = PAGES[page_name]
        image_columns = self._columns("images", self.image_columns)
        value_columns = self._columns("values", self.value_columns)
        esc = html.escape
        out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">']
        if refresh_seconds:
            out.append(f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">')
        out += [f"<title>{esc(self.title)}</title>", f"<style>{_STYLE}</style>", "</head><body>",
                f"<h1>{esc(self.title)}</h1>",
                f"<p>{len(self.rows)} image(s), {len(self.skipped)} skipped; written "
                f"{esc(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>"]
        nav = [f"<b>sorted by {esc(h)}</b>" if name == page_name else f'<a href="{esc(name)}">sorted by {esc(h)}</a>'
               for name, (h, _, _) in PAGES.items()]
        out.append("<nav>" + " ".join(nav) + (' <a href="#skipped">skipped files</a>' if self.skipped else "")
                   + "</nav>")
        out += [f'<p class="note">{esc(n)}</p>' for n in self.notes]
        if self.headline:
            out.append('<h2>Headline</h2><table class="headline">')
            out += [f'<tr><th>{esc(str(k))}</th><td class="num">{esc(_format(v))}</td></tr>'
                    for k, v in self.headline.items()]
            out.append("</table>")
        if self.figures:
            out.append('<p class="figures">' + " ".join(
                f'<a href="{href(f, self.folder)}"><img class="figure" src="{href(f, self.folder)}" '
                f'alt="{esc(f.name, quote=True)}"></a>' for f in self.figures if f.exists()) + "</p>")
        if self.legend is not None:
            title, entries, full = self.legend
            out.append(f"<h2>{esc(title)}</h2>")
            out.append('<ul class="legend">' + "".join(
                f'<li><span class="swatch" style="background: rgb({int(c[0])},{int(c[1])},{int(c[2])})"></span>'
                f'{esc(name)}' + (f" ({100 * share:.1f} %)" if share is not None else "") + "</li>"
                for name, c, share in entries) + "</ul>")
            if full is not None and full.exists():
                out.append(f'<p><a href="{href(full, self.folder)}">every class of this level ({esc(full.name)})</a></p>')
        notes = _Footnotes()
        out.append('<h2>Images</h2><table class="images"><tr><th>#</th><th>file</th><th>score</th>'
                   + "".join(f"<th>{esc(c)}</th>" for c in value_columns)
                   + "".join(f"<th>{esc(c)}</th>" for c in image_columns) + "</tr>")
        for rank, row in enumerate(self._sorted(key, descending), start=1):
            out.append(f'<tr class="image"><td class="num">{rank}</td><td class="name">{_name_html(row.name)}</td>'
                       f'<td class="num score">{esc(_format(row.score))}</td>'
                       + "".join(notes.cell(row.values.get(c)) for c in value_columns)
                       + "".join(self._image_cell(c, row.images.get(c)) for c in image_columns) + "</tr>")
        out.append("</table>")
        out += notes.html()
        if self.skipped:
            out.append('<h2 id="skipped">Skipped files</h2><table class="skipped"><tr><th>file</th><th>reason</th></tr>')
            out += [f'<tr class="skip"><td class="name">{_name_html(f)}</td><td>{esc(r)}</td></tr>'
                    for f, r in self.skipped]
            out.append("</table>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"

    def write(self, refresh_seconds: Optional[int] = None) -> Path:
        """Writes every page of `PAGES` (atomically) and returns index.html's path. While a run
        goes on, `refresh_seconds` makes a browser reload the page by itself (a meta refresh)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in PAGES:
            _write_atomically(self.folder / name,
                              self._page(name, refresh_seconds).encode("utf-8", "backslashreplace"))
        return self.folder / "index.html"


def write_index(folder, rows: Sequence[PageRow], *, title: str, skipped: Sequence[tuple[str, str]] = (),
                headline: Optional[Mapping[str, Any]] = None, figures: Sequence = (), **kwargs) -> Path:
    """The pages of a finished run in one call (see `RunPage`)."""
    page = RunPage(folder, title=title, **kwargs)
    for row in rows:
        page.add(row)
    for file, reason in skipped:
        page.skip(file, reason)
    if headline or figures:
        page.set_headline(headline or {}, figures)
    return page.write()
