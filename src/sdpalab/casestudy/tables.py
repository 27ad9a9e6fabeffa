"""The reproduction's two tables: published figures beside ours, and the corrections.

Plain rows of strings, so the console (rich), the markdown file and the HTML report all show
the same text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sdpalab.casestudy.corrections import Correction
from sdpalab.casestudy.experiments import Row
from sdpalab.casestudy.published import NOTES
from sdpalab.report.tables import format_ms
from sdpalab.units import format_bytes


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


COMPARISON_COLUMNS = [
    "experiment",
    "case study sizes",
    "ours [B, H, S, D]",
    "what runs",
    'published "Memory Profile" (a CPU time)',
    "published benchmark",
    "ours, same profiler figure",
    "ours: latency median (IQR)",
    "ours: peak memory above inputs",
    "ours: max abs error vs float64",
    "kernel / status",
]


def _latency(row: Row) -> str:
    r = row.result
    if not r.ok:
        return "-"
    noisy = ", noisy" if r.noisy else ""
    return f"{format_ms(r.latency_ms)} ms ({format_ms(r.latency_iqr_ms)}, n={r.latency_n}{noisy})"


def comparison_table(rows: list[Row]) -> Table:
    """Published figures beside ours, one row per trial."""
    body = []
    for row in rows:
        r, t, pub = row.result, row.trial, row.trial.published
        body.append(
            [
                t.experiment,
                t.their_shape(),
                t.our_shape(),
                f"{t.role} ({r.label})",
                pub.memory_profile if pub else "-",
                pub.benchmark if pub else "-",
                f"{format_ms(row.profiler_cpu_total_ms)} ms" if row.profiler_cpu_total_ms else "-",
                _latency(row),
                format_bytes(r.peak_mem_bytes) if r.ok else "-",
                f"{r.max_abs_err:.2g}" if r.max_abs_err is not None else "-",
                (r.kernel or "-") if r.ok else f"{r.status}: {r.reason}"[:160],
            ]
        )
    notes = [
        *NOTES,
        '"ours, same profiler figure" is the number the case study\'s profile() prints for '
        "the same call here (one warm call; theirs included a first, cold call): a time, "
        "shown so it can be set beside theirs. Memory is the next-but-one column, in bytes.",
        "Latency: sl.measure, warm-up then median and IQR of n timed calls (CUDA events on a "
        "GPU, a monotonic clock on a CPU). Errors: against the float64 oracle; projections are "
        "compared with float64 projections using the unquantized weights, so quantization's "
        "error is included.",
        "KV cache: the case study's single profiled call filled an empty cache, so it is set "
        "beside our prefill; the decode step (one token against the cached context) is what a "
        "KV cache is for. The case study's benchmark timed a cache that grew on every call "
        "(see the corrections), so its figures are not comparable to a fixed-size call.",
    ]
    return Table(
        "The case study's published figures beside sdpalab's", COMPARISON_COLUMNS, body, notes
    )


def corrections_table(corrections: list[Correction]) -> Table:
    """What the case study measured wrongly, what the correct measurement is, and the
    measurement taken here that shows it."""
    return Table(
        "What the case study measured wrongly, and the correct measurement",
        ["issue", "the case study", "correct", "measured here"],
        [[c.issue, c.theirs, c.correct, c.evidence] for c in corrections],
    )


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(tables: list[Table], header: list[str]) -> str:
    """The whole ``case-study.md``: header lines, then each table with its notes."""
    lines = [*header]
    for table in tables:
        lines += ["", f"## {table.title}", ""]
        lines.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
        lines.append("|" + "---|" * len(table.columns))
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
        if table.notes:
            lines.append("")
            lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"
