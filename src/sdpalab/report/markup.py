"""HTML primitives that escape: every string that reaches a page goes through these."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def escape(text: Any) -> str:
    """Any value as HTML-safe text (``&``, ``<``, ``>``, quotes escaped)."""
    return html.escape("" if text is None else str(text), quote=True)


def html_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    caption: str | None = None,
    numeric: Iterable[int] = (),
) -> str:
    """A ``<table>`` with every header and cell escaped. ``numeric``: column indices to
    right-align."""
    numeric = set(numeric)
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escape(v)}</td>' if i in numeric else f"<td>{escape(v)}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure_html(png: str | Path, caption: str | None = None) -> str:
    """A PNG file embedded as a ``data:`` URI in a ``<figure>``."""
    png = Path(png)
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    cap = escape(caption if caption is not None else png.stem)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{cap}">'
        f"<figcaption>{cap}</figcaption></figure>"
    )
