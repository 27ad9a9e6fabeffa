"""The search's results for people: the Pareto front and recommendation, the sensitivity table.

Console renderers (rich) for ``sdpalab search``, ``sdpalab pareto`` and ``sdpalab sensitivity``,
and the matching sections of ``report.html``. Strings from results (labels, notes) are printed
with markup off and escaped in HTML.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sdpalab.report.markup import escape, html_table
from sdpalab.report.tables import EAGER_MARK, EAGER_NOTE, SHAPE, eager_among_graphs, format_ms
from sdpalab.units import format_bytes

if TYPE_CHECKING:
    from sdpalab.spec import Constraints

_LIMIT_TEXT = {
    "max_error": "error <= {:.3g}",
    "max_kl": "KL <= {:.3g}",
    "max_ppl_increase": "perplexity <= +{:.3g} %",
    "max_memory": "memory <= {}",
    "max_latency_ms": "latency <= {:.3g} ms",
}


def limits_text(constraints: Constraints) -> str:
    parts = []
    for name, template in _LIMIT_TEXT.items():
        value = getattr(constraints, name)
        if value is not None:
            parts.append(template.format(format_bytes(value) if name == "max_memory" else value))
    text = ", ".join(parts) or "none (errors must stay within each dtype's tolerance)"
    if constraints.allow_approximate:  # a variant of another mask than the workload's may win
        text += "; approximations allowed"
    return text


def _latency_cells(rows: list[dict]) -> tuple[list[str], bool]:
    """Each row's latency, marked where it was an eager call among graph replays; and whether
    any was (the table then needs :data:`EAGER_NOTE`)."""
    eager = eager_among_graphs(r.get("timing_method") for r in rows)
    cells = [
        format_ms(r["latency_ms"]) + (f" {EAGER_MARK}" if i in eager else "")
        for i, r in enumerate(rows)
    ]
    return cells, bool(eager)


FRONT_COLUMNS = ("configuration", "ms", "± IQR", "memory", "KV cache", "error", "pick")
"""The front's columns, in the console and in the HTML report alike (short, so that a front fits
a 100-column terminal; the title says which memory measure the ``memory`` column holds, and an
error that is a model's KL says so)."""
OVER_TOLERANCE = "over tol."
"""The pick of a front member whose error is above its tolerance: not recommended."""


def front_cells(row: dict, latency: str) -> list[str]:
    """One front row as the strings of :data:`FRONT_COLUMNS`."""
    return [
        row["configuration"],
        latency,
        format_ms(row["latency_iqr_ms"]),
        format_bytes(row["memory_bytes"]),
        format_bytes(row["kv_cache_bytes"]),
        error_cell(row),
        row["pick"],
    ]


def error_cell(row: dict) -> str:
    """A row's error: ``3.1e-07`` (relative error), ``KL 0.0057`` (a model's), ``-``."""
    value = row.get("error", row.get("rel_fro_err"))
    if value is None:
        return "-"
    return f"KL {value:.2g}" if row.get("error_measure") == "kl_mean_nats" else f"{value:.2g}"


def _memory_measures(rows: list[dict]) -> str:
    return "/".join(sorted({r["memory_measure"] for r in rows})) or "-"


def _tolerance_note(rows: list[dict]) -> str:
    """What ``over tol.`` means, with the tolerances of the rows it marks."""
    marked = [r for r in rows if r["pick"] == OVER_TOLERANCE]
    tols = sorted({f"{r['tolerance']:.2g}" for r in marked if _finite(r["tolerance"])})
    if not tols:
        return ""
    kl = any(r.get("error_measure") == "kl_mean_nats" for r in marked)
    flag = "--max-kl or --max-ppl-increase" if kl else "--max-error"
    return (
        f"{OVER_TOLERANCE}: error above the tolerance ({', '.join(tols)}); never recommended "
        f"unless {flag} allows it"
    )


def _finite(value) -> bool:
    return value is not None and value == value


def _front_table(rows: list[dict], latencies: list[str], title: str) -> Table:
    # fits a terminal of 80 columns and more: the configuration folds, sizes wrap at their
    # space ("10.9" over "MiB"), the other numbers never break
    table = Table(title=title, title_justify="left", title_style="bold")
    for name in FRONT_COLUMNS:
        if name == "configuration":
            table.add_column(name, overflow="fold", min_width=12)
        elif name == "pick":
            table.add_column(name, overflow="fold", max_width=10)
        elif name in ("memory", "KV cache"):
            table.add_column(name, justify="right")
        else:
            table.add_column(name, justify="right", no_wrap=True)
    for row, latency in zip(rows, latencies, strict=True):
        style = "bold green" if row["pick"] == "best" else ""
        cells = front_cells(row, latency)
        table.add_row(Text(cells[0], style=style), *cells[1:-1], Text(cells[-1], style=style))
    return table


def render_front(console: Console, summary) -> None:
    """Each shape's front (the pick in bold), its recommendation as a pasteable Variant, and
    every other result with why it is off the front."""
    rows, excluded = summary.rows(), summary.excluded_rows()
    console.print(
        Text(
            f"limits: {limits_text(summary.constraints)}; priority: {summary.priority}; "
            f"memory: {summary.memory_label()}"
        )
    )
    for shape in summary.shapes:
        mine = [r for r in rows if r["shape"] == shape]
        points = f"{len(mine)} point" + ("s" if len(mine) != 1 else "")
        title = f"Pareto front · {shape} ({points}; memory = {_memory_measures(mine)})"
        latencies, any_eager = _latency_cells(mine)
        console.print(_front_table(mine, latencies, title))
        if any_eager:
            console.print(Text(EAGER_NOTE, style="dim"))
        if _tolerance_note(mine):
            console.print(Text(_tolerance_note(mine), style="dim"))
        off = [r for r in excluded if r["shape"] == shape]
        if off:
            console.print(Text(f"not on the front ({len(off)}):", style="dim"))
            for r in off:
                console.print(Text(f"  {r['configuration']}: {r['reason']}", style="dim"))
        rec = summary.recommendations.get(shape)
        if rec is None:
            console.print(
                Text(f"no recommendation: {summary.unavailable.get(shape, '')}", style="yellow")
            )
            continue
        console.print(Text(rec.summary()))
        console.print(Text("as YAML:", style="dim"))
        console.print(Text(rec.variant_yaml()))
        snippet = rec.transformers_snippet()
        if snippet:
            console.print(Text("in your own transformers model:", style="dim"))
            console.print(Text(snippet), soft_wrap=True)  # wrapped lines would not paste


def short_shape(label: str) -> str:
    """``batch=4, seq_kv=8192`` → ``B=4 S=8192``: the summary tables' names for shapes."""
    short = dict(SHAPE)
    out = []
    for part in label.split(", "):
        key, sep, value = part.partition("=")
        out.append(f"{short.get(key, key)}={value}" if sep else part)
    return " ".join(out)


def render_goldilocks(console: Console, table, within: float, top: int = 10) -> None:
    """Configurations measured on every shape, by their worst gap to a shape's front. The
    per-shape gaps that do not fit the console are left out (``--json`` has them all)."""
    if table.empty:
        console.print(Text("no configuration ran within the limits on every shape", style="yellow"))
        return
    title = (
        f"one configuration for every shape: within {within:.0%} of each front? "
        "(gap on latency and memory; accurate and within limits everywhere)"
    )
    block = Table(title=title, title_justify="left", title_style="bold")
    gaps = [c for c in table.columns if c.startswith("gap[")]
    heads = [short_shape(g[4:-1]) for g in gaps]
    # every column at its natural width (a cell and its padding and border), the gaps that
    # fit after the configuration (folded past 40 characters, never cut) and the worst gap
    labels = [len(label) for label in table.head(top)["label"]]
    room = console.width - 1 - (min(max(labels), 40) + 3) - (len("worst gap") + 3)
    shown = []
    for gap, head in zip(gaps, heads, strict=True):
        need = max(len(head), 5) + 3
        if need > room:
            break
        shown.append((gap, head))
        room -= need
    block.add_column("configuration", overflow="fold", max_width=40)
    block.add_column("worst gap", justify="right", no_wrap=True)
    for _, head in shown:
        block.add_column(head, justify="right")
    for row in table.head(top).to_dict("records"):
        style = "bold green" if row["goldilocks"] else ""
        block.add_row(
            Text(row["label"], style=style),
            f"{row['worst_gap']:.0%}",
            *(f"{row[g]:.0%}" for g, _ in shown),
        )
    console.print(block)
    if len(shown) < len(gaps):
        console.print(
            Text(
                f"gaps on {len(gaps) - len(shown)} more shapes left out to fit; --json has them",
                style="dim",
            )
        )
    picks = table[table["goldilocks"].astype(bool)]
    if picks.empty:
        console.print(
            Text(
                f"none is within {within:.0%} everywhere; the closest is "
                f"{table['label'].iloc[0]} ({table['worst_gap'].iloc[0]:.0%})"
            )
        )
    else:
        console.print(
            Text(f"goldilocks: {picks['variant'].iloc[0]}  # dtype={picks['dtype'].iloc[0]!r}")
        )


def render_search(console: Console, found, summary) -> None:
    """A finished search: what it measured, reused and inferred; then the fronts."""
    console.print(
        Text(
            f"search: {found.measured} measured, {found.reused} answered from the store, "
            f"{found.inferred} inferred from a smaller shape, {found.invalid} outside the grid"
            + ("; every point is known" if found.exhausted else "")
            + f"; {len(found.results)} results in {found.out}"
        )
    )
    render_front(console, summary)
    console.print(Text(f"study: optuna-dashboard {found.storage}", style="dim"))


def render_sensitivity(console: Console, table) -> None:
    """The sensitivity table, one block per objective. What a method's notes share is printed
    once underneath; the column keeps what is particular to the row (an axis's kind, S1)."""
    shared: dict[str, int] = {}
    for objective in dict.fromkeys(table["objective"]):
        block = Table(
            title=f"sensitivity · {objective} (log10)", title_justify="left", title_style="bold"
        )
        for name in ("axis", "method", "importance", "95% interval", "note"):
            block.add_column(name, justify="right" if name == "importance" else "left")
        rows = table[table["objective"] == objective]
        for method in dict.fromkeys(rows["method"]):
            group = list(rows[rows["method"] == method].itertuples())
            common = _common_clauses([r.note for r in group])
            mark = shared.setdefault(common, len(shared) + 1)
            for row in group:
                rest = row.note[len(common) :].lstrip("; ")
                note = f"[{mark}] {rest}".rstrip()
                if row.importance != row.importance:  # NaN: the method could not run
                    block.add_row(row.axis or "-", row.method, "-", "-", Text(note))
                else:
                    block.add_row(
                        Text(row.axis),
                        row.method,
                        f"{row.importance:.3f}",
                        f"{row.ci_low:.3f} - {row.ci_high:.3f}",
                        Text(note),
                    )
        console.print(block)
    for note, mark in shared.items():
        console.print(Text(f"[{mark}] {note}", style="dim"))


def _common_clauses(notes: list[str]) -> str:
    """The longest run of leading ``; ``-separated clauses every note shares."""
    split = [n.split("; ") for n in notes]
    common = []
    for clauses in zip(*split, strict=False):
        if len(set(clauses)) > 1:
            break
        common.append(clauses[0])
    return "; ".join(common)


# --------------------------------------------------------------------------- JSON


def search_stats(found) -> dict:
    """What a search measured, reused and inferred, and where it lives (for ``--json``)."""
    return {
        "out": str(found.out),
        "storage": str(found.storage),
        "measured": found.measured,
        "reused": found.reused,
        "inferred": found.inferred,
        "invalid": found.invalid,
        "exhausted": found.exhausted,
        "results": len(found.results),
    }


def goldilocks_rows(table) -> list[dict]:
    """The across-shapes table as JSON-ready rows."""
    return [{str(k): v for k, v in row.items()} for row in table.to_dict("records")]


def json_document(doc) -> str:
    """``doc`` as one JSON document: NaN and infinities become null (JSON has neither),
    numpy scalars plain numbers."""
    return json.dumps(_plain(doc), indent=2, allow_nan=False)


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


# --------------------------------------------------------------------------- HTML


def front_section(summary) -> tuple[str, str]:
    """``("Pareto front and recommendation", html)`` for :func:`write_report`: the same rows,
    picks and exclusions as ``sdpalab pareto`` prints."""
    parts = [
        f"<p>limits: {escape(limits_text(summary.constraints))}; priority: "
        f"{escape(summary.priority)}; memory: {escape(summary.memory_label())}.</p>"
    ]
    rows, excluded = summary.rows(), summary.excluded_rows()
    for shape in summary.shapes:
        mine = [r for r in rows if r["shape"] == shape]
        latencies, any_eager = _latency_cells(mine)
        parts.append(
            html_table(
                FRONT_COLUMNS,
                [front_cells(r, latency) for r, latency in zip(mine, latencies, strict=True)],
                caption=f"Pareto front · {shape} (memory = {_memory_measures(mine)})",
                numeric=(1, 2, 3, 4, 5),
            )
        )
        if any_eager:
            parts.append(f'<p class="note">{escape(EAGER_NOTE)}</p>')
        if _tolerance_note(mine):
            parts.append(f'<p class="note">{escape(_tolerance_note(mine))}</p>')
        off = [r for r in excluded if r["shape"] == shape]
        if off:
            parts.append(
                f"<details><summary>not on the front ({len(off)})</summary>"
                + html_table(
                    ["configuration", "why"], [[r["configuration"], r["reason"]] for r in off]
                )
                + "</details>"
            )
        rec = summary.recommendations.get(shape)
        if rec is None:
            parts.append(f"<p>no recommendation: {escape(summary.unavailable.get(shape))}</p>")
        else:
            text = f"{rec.summary()}\n\n{rec.variant_yaml()}"
            snippet = rec.transformers_snippet()
            if snippet:
                text += f"\n\n# in your own transformers model:\n{snippet}"
            parts.append(f"<pre>{escape(text)}</pre>")
    return "Pareto front and recommendation", "".join(parts)


def sensitivity_section(table) -> tuple[str, str]:
    """``("Sensitivity", html)``: every row of the table, notes in full."""
    rows = [
        [
            r.objective,
            r.axis,
            r.method,
            "-" if r.importance != r.importance else f"{r.importance:.3f}",
            "-" if r.ci_low != r.ci_low else f"{r.ci_low:.3f} - {r.ci_high:.3f}",
            r.note,
        ]
        for r in table.itertuples()
    ]
    html = html_table(
        ["objective", "axis", "method", "importance", "95% interval", "note"], rows, numeric=(3,)
    )
    return "Sensitivity", html


def write_search_report(run_dir: str | Path, results, *, summary=None, sensitivity=None) -> Path:
    """``run_dir/report.html`` with the front, the recommendation and the sensitivity."""
    from sdpalab.report.html import write_report

    sections = []
    if summary is not None:
        sections.append(front_section(summary))
    if sensitivity is not None:
        sections.append(sensitivity_section(sensitivity))
    recs = list(summary.recommendations.values()) if summary is not None else []
    return write_report(
        run_dir,
        results=results,
        extra_sections=sections,
        front=summary.front if summary is not None else None,
        recommendation=recs[0] if len(recs) == 1 else None,
        sensitivity=sensitivity,
        memory=summary.memory if summary is not None else "auto",
        constraints=summary.constraints if summary is not None else None,
    )
