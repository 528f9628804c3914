"""A report as a list of blocks (heading, text, code, bullets, table, image, a collapsed paragraph) and its two
renderings: Markdown (images linked) and one self-contained HTML file (inline CSS, images inlined as base64, no
external reference). Text from a results file is shown, never run: markup is escaped in both renderings, and a
Markdown table cell that a spreadsheet would run as a formula is quoted (`safe_cell`).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str


@dataclass
class Code:
    text: str


@dataclass
class Bullets:
    items: list[str]
    warning: bool = False  # shown as warnings (HTML: in a warning colour)


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    marked: set[int] = field(default_factory=set)  # indices of rows to emphasise (the best router)


@dataclass
class Image:
    path: Path  # relative to the report's directory
    caption: str


@dataclass
class Details:
    """A paragraph shown collapsed under a one-line summary (HTML <details>; Markdown renders it the same way)."""

    summary: str
    text: str


Block = Heading | Text | Code | Bullets | Table | Image | Details


_FORMULA = re.compile(r"[=@\t\r]|[+-](?!\.?\d)")  # what a spreadsheet would run: =, @, or +/- before a non-number
_TAG = re.compile(r"<(?=[A-Za-z/!?])")  # what could open an HTML tag, comment or declaration


def safe_cell(text: str) -> str:
    """A table cell that a spreadsheet opens as text: one starting with =, @, a tab or a carriage return, or with + or
    - not followed by a number, gets a leading apostrophe (-0.5 and +3 stay numbers)."""
    return "'" + text if _FORMULA.match(text) else text


def _md_text(text: str) -> str:
    """Text that a Markdown viewer shows as written: `<` before a letter, `/`, `!` or `?` (a tag) as `&lt;`."""
    return _TAG.sub("&lt;", text)


def _md_cell(text: str) -> str:
    return _md_text(safe_cell(text)).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block]) -> str:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {_md_text(block.text)}")
        elif isinstance(block, Text):
            out.append(_md_text(block.text))
        elif isinstance(block, Code):
            out.append(f"```\n{block.text}\n```")
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {_md_text(item)}" for item in block.items))
        elif isinstance(block, Table):
            lines = ["| " + " | ".join(map(_md_cell, block.header)) + " |", "|" + "---|" * len(block.header)]
            for i, row in enumerate(block.rows):
                cells = [_md_cell(c) for c in row]
                if i in block.marked:
                    cells = [f"**{c}**" for c in cells]
                lines.append("| " + " | ".join(cells) + " |")
            out.append("\n".join(lines))
        elif isinstance(block, Image):
            caption = _md_text(block.caption)
            out.append(f"![{caption}]({block.path.as_posix()})\n\n*{caption}*")
        elif isinstance(block, Details):
            out.append(f"<details><summary>{html.escape(block.summary)}</summary>\n\n{_md_text(block.text)}\n\n"
                       "</details>")
    return "\n\n".join(out) + "\n"


CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}th{background:#f3f3f3}
th:first-child,td:first-child{text-align:left}tr.best{background:#e6f4ea;font-weight:bold}
td.long{white-space:normal;text-align:left;min-width:16em}
figure{margin:1.5em 0}img{max-width:100%}figcaption{font-style:italic;color:#555}
.wide{overflow-x:auto}details{margin:1em 0}summary{cursor:pointer;font-weight:600}
ul.warnings li{color:#8a4b00}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap}"""


LONG = 40  # characters: a longer table cell (an error message) wraps instead of widening the table


def render_html(blocks: Sequence[Block], title: str, base: Path) -> str:
    """One HTML file with inline CSS and every image inlined as base64 (no external reference)."""
    esc = html.escape
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            out.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, Code):
            out.append(f"<pre><code>{esc(block.text)}</code></pre>")
        elif isinstance(block, Bullets):
            items = "".join(f"<li>{esc(item)}</li>" for item in block.items)
            out.append(("<ul class=\"warnings\">" if block.warning else "<ul>") + items + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{esc(c)}</th>" for c in block.header)
            body = "".join(("<tr class=\"best\">" if i in block.marked else "<tr>")
                           + "".join(f"<td class=\"long\">{esc(c)}</td>" if len(c) > LONG else f"<td>{esc(c)}</td>"
                                     for c in row) + "</tr>" for i, row in enumerate(block.rows))
            out.append(f"<div class=\"wide\"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
        elif isinstance(block, Image):
            data = base64.b64encode((base / block.path).read_bytes()).decode("ascii")
            out.append(f"<figure><img alt=\"{esc(block.caption)}\" src=\"data:image/png;base64,{data}\">"
                       f"<figcaption>{esc(block.caption)}</figcaption></figure>")
        elif isinstance(block, Details):
            out.append(f"<details><summary>{esc(block.summary)}</summary><p>{esc(block.text)}</p></details>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")
