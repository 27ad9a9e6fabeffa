"""Shared plotting set-up: the Agg backend, saving, colours, safe file names."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # before pyplot: no display, ever
import matplotlib.pyplot as plt  # after use("Agg"); other modules take plt from here

DPI = 110


def slug(text: str) -> str:
    """``text`` as a file-name fragment: letters, digits, ``_`` and ``.``, the rest ``-``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-")[:80] or "x"


def colors(labels: Iterable[str]) -> dict[str, Any]:
    """A stable colour per label (sorted, so the same label gets the same colour)."""
    names = sorted(set(labels))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def save(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parents created) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)  # constrained layout: one draw, no tight-bbox pass
    plt.close(fig)
    return path


def log2_tokens(ax) -> None:
    """A log2 x axis labelled with plain integers (sequence lengths are powers of two)."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))


def ok_rows(rows: list[dict]) -> list[dict]:
    """Rows whose trial succeeded."""
    return [r for r in rows if (r.get("status") or "ok") == "ok"]


def bytes_ticks(axis, low: float, high: float, n: int = 6) -> None:
    """On a linear byte axis, ticks at multiples of a power of two (``256 KiB`` steps rather
    than ``97.7 KiB`` ones), about ``n`` of them over ``[low, high]``."""
    # equal values: the axis's own margins around them set the span, about a tenth of the value
    span = max(high - low, abs(high) / 10, 1.0)
    step = 2 ** math.ceil(math.log2(span / n))
    axis.set_major_locator(matplotlib.ticker.MultipleLocator(step))
