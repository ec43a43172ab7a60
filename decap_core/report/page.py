"""The report as one self-contained HTML page: figures inline as PNG data URIs, no scripts, no
fetches (an empty data-URI icon keeps the browser from asking for a favicon)."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from decap_core.report.examples import Example

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1280px; color: #222; line-height: 1.4; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.figure { max-width: 100%; border: 1px solid #ddd; }
img.thumb { width: 160px; height: auto; image-rendering: pixelated; }
.yes { color: #1a7f37; } .no { color: #b42318; }
.small { font-size: 0.85em; color: #555; }
"""
YES, NO = ' <span class="yes">&#10003;</span>', ' <span class="no">&#10007;</span>'


@dataclass(frozen=True)
class Figure:
    """A PNG with its heading and a sentence saying how to read it."""

    title: str
    png: bytes
    caption: str


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


class Num(str):
    """A formatted number: a table shows it right-aligned."""


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table of escaped cells; ``Num`` cells are right-aligned."""
    head = "".join(f"<th>{_e(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(_cell(cell) for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(cell: Any) -> str:
    return f'<td class="num">{_e(cell)}</td>' if isinstance(cell, Num) else f"<td>{_e(cell)}</td>"


def figure(item: Figure) -> str:
    return (f"<h3>{_e(item.title)}</h3><img class=\"figure\" alt=\"{_e(item.title)}\" src=\"{data_uri(item.png)}\">"
            f"<p class=\"small\">{_e(item.caption)}</p>")


def examples_table(examples: Sequence[Example], strategies: Sequence[str]) -> str:
    """One row per example: image, reference, each strategy's caption, the memory's nearest texts."""
    header = "".join(f"<th>{_e(s)}</th>" for s in strategies)
    rows = []
    for example in examples:
        image = (f'<img class="thumb" alt="{_e(example.key)}" src="{data_uri(example.thumbnail)}">'
                 if example.thumbnail else '<span class="small">embedding input: no image</span>')
        cells = []
        for strategy in strategies:
            caption = example.captions.get(strategy)
            mark = ""
            if example.exact is not None and strategy in example.exact:
                mark = YES if example.exact[strategy] else NO
            cells.append(f"<td>{_e(caption) if caption is not None else '-'}{mark}</td>")
        neighbors = "<br>".join(f"{weight:.3f} &nbsp;{_e(text)}" for text, weight in example.neighbors) or "-"
        rows.append(f"<tr><td>{image}<br><span class=\"small\">{_e(example.key)}</span></td>"
                    f"<td>{_e(example.reference)}</td>{''.join(cells)}<td class=\"small\">{neighbors}</td></tr>")
    return (f"<table><tr><th>image</th><th>reference</th>{header}<th>top memory neighbours (pd weight)</th></tr>"
            f"{''.join(rows)}</table>")


def render_page(title: str, run_facts: Mapping[str, Any], sections: Sequence[tuple[str, str]]) -> str:
    """The whole page: a facts table about the run, then each ``(heading, inner HTML)`` section."""
    facts = table(["", ""], [[name, value] for name, value in run_facts.items()])
    body = "".join(f"<h2>{_e(heading)}</h2>{inner}" for heading, inner in sections)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<link rel=\"icon\" href=\"data:,\"><style>{STYLE}</style></head>"
            f"<body><h1>{_e(title)}</h1>{facts}{body}</body></html>\n")
