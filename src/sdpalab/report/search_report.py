"""The search's results for people: the Pareto front and recommendation, the sensitivity table.

Console renderers (rich) for ``sdpalab search``, ``sdpalab pareto`` and ``sdpalab sensitivity``,
and the matching sections of ``report.html``. Strings from results (labels, notes) are printed
with markup off and escaped in HTML.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sdpalab.report.markup import escape, html_table
from sdpalab.report.tables import EAGER_MARK, EAGER_NOTE, eager_among_graphs, format_ms
from sdpalab.units import format_bytes

if TYPE_CHECKING:
    from sdpalab.spec import Constraints

_LIMIT_TEXT = {
    "max_error": "error <= {:.3g}",
    "max_memory": "memory <= {}",
    "max_latency_ms": "latency <= {:.3g} ms",
}


def limits_text(constraints: Constraints) -> str:
    parts = []
    for name, template in _LIMIT_TEXT.items():
        value = getattr(constraints, name)
        if value is not None:
            parts.append(template.format(format_bytes(value) if name == "max_memory" else value))
    return ", ".join(parts) or "none (errors must stay within each dtype's tolerance)"


def _latency_cells(rows: list[dict]) -> tuple[list[str], bool]:
    """Each row's latency, marked where it was an eager call among graph replays; and whether
    any was (the table then needs :data:`EAGER_NOTE`)."""
    eager = eager_among_graphs(r.get("timing_method") for r in rows)
    cells = [
        format_ms(r["latency_ms"]) + (f" {EAGER_MARK}" if i in eager else "")
        for i, r in enumerate(rows)
    ]
    return cells, bool(eager)


def _front_table(rows: list[dict], latencies: list[str], title: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold")
    for name in ("configuration", "latency ms", "± IQR", "memory", "rel error", "pick"):
        table.add_column(name, justify="left" if name in ("configuration", "pick") else "right")
    for row, latency in zip(rows, latencies, strict=True):
        style = "bold green" if row["pick"] == "best" else ""
        table.add_row(
            Text(row["configuration"], style=style),
            latency,
            format_ms(row["latency_iqr_ms"]),
            format_bytes(row["memory_bytes"]),
            "-" if row["rel_fro_err"] is None else f"{row['rel_fro_err']:.2g}",
            Text(row["pick"], style=style),
        )
    return table


def render_front(console: Console, summary) -> None:
    """Each shape's front (the pick in bold) and its recommendation as a pasteable Variant."""
    rows = summary.rows()
    console.print(Text(f"limits: {limits_text(summary.constraints)}; priority: {summary.priority}"))
    for shape in summary.shapes:
        mine = [r for r in rows if r["shape"] == shape]
        title = f"Pareto front · {shape} ({len(mine)} points; memory = total peak)"
        latencies, any_eager = _latency_cells(mine)
        console.print(_front_table(mine, latencies, title))
        if any_eager:
            console.print(Text(EAGER_NOTE, style="dim"))
        rec = summary.recommendations.get(shape)
        if rec is None:
            console.print(
                Text(f"no recommendation: {summary.unavailable.get(shape, '')}", style="yellow")
            )
            continue
        console.print(Text(rec.summary()))
        console.print(Text("as YAML:", style="dim"))
        console.print(Text(rec.variant_yaml()))


def render_goldilocks(console: Console, table, within: float, top: int = 10) -> None:
    """Configurations measured on every shape, by their worst gap to a shape's front."""
    if table.empty:
        console.print(Text("no configuration ran within the limits on every shape", style="yellow"))
        return
    title = (
        f"one configuration for every shape: within {within:.0%} of each front? "
        "(gap on latency and memory; accurate and within limits everywhere)"
    )
    block = Table(title=title, title_justify="left", title_style="bold")
    gaps = [c for c in table.columns if c.startswith("gap[")]
    for name in ("configuration", "worst gap", *(g[4:-1] for g in gaps)):
        block.add_column(name, justify="left" if name == "configuration" else "right")
    for row in table.head(top).to_dict("records"):
        style = "bold green" if row["goldilocks"] else ""
        block.add_row(
            Text(row["label"], style=style),
            f"{row['worst_gap']:.0%}",
            *(f"{row[g]:.0%}" for g in gaps),
        )
    console.print(block)
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


# --------------------------------------------------------------------------- HTML


def front_section(summary) -> tuple[str, str]:
    """``("Pareto front and recommendation", html)`` for :func:`write_report`."""
    parts = [
        f"<p>limits: {escape(limits_text(summary.constraints))}; priority: "
        f"{escape(summary.priority)}; memory is the total peak (inputs, KV cache and the "
        "call's own).</p>"
    ]
    rows = summary.rows()
    for shape in summary.shapes:
        mine = [r for r in rows if r["shape"] == shape]
        latencies, any_eager = _latency_cells(mine)
        parts.append(
            html_table(
                ["configuration", "latency ms", "± IQR", "memory", "rel error", "pick"],
                [
                    [
                        r["configuration"],
                        latency,
                        format_ms(r["latency_iqr_ms"]),
                        format_bytes(r["memory_bytes"]),
                        "-" if r["rel_fro_err"] is None else f"{r['rel_fro_err']:.2g}",
                        r["pick"],
                    ]
                    for r, latency in zip(mine, latencies, strict=True)
                ],
                caption=f"Pareto front · {shape}",
                numeric=(1, 2, 3, 4),
            )
        )
        if any_eager:
            parts.append(f'<p class="note">{escape(EAGER_NOTE)}</p>')
        rec = summary.recommendations.get(shape)
        if rec is None:
            parts.append(f"<p>no recommendation: {escape(summary.unavailable.get(shape))}</p>")
        else:
            parts.append(f"<pre>{escape(rec.summary())}\n\n{escape(rec.variant_yaml())}</pre>")
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
    )
