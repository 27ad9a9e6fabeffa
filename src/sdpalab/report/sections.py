"""The sections of ``report.html``: summary tables, every trial, failures, comparison,
provenance. Each returns an HTML fragment with every user-supplied string escaped."""

from __future__ import annotations

import json
from typing import Any

from sdpalab.report.markup import escape, html_table
from sdpalab.report.tables import (
    EAGER_MARK,
    EAGER_NOTE,
    failures,
    format_ms,
    group_tables,
    row_label,
    trial_rows,
)
from sdpalab.units import format_bytes


def summary_html(results) -> str:
    parts = []
    any_eager = False
    for table in group_tables(results):
        head = "<th>variant</th>" + "".join(f"<th>{escape(c)}</th>" for c in table.columns)
        body = []
        for row in table.rows:
            cells = [f"<th>{escape(row)}</th>"]
            for column in table.columns:
                cell = table.cells.get((row, column))
                if cell is None:
                    cells.append("<td></td>")
                elif cell.status != "ok":
                    cells.append(
                        f'<td class="fail" title="{escape(cell.reason)}">{escape(cell.status)}</td>'
                    )
                else:
                    marks = (
                        ' <span class="noisy" title="noisy: IQR &gt; 10% of median">!</span>'
                        if cell.noisy
                        else ""
                    )
                    if cell.eager:
                        marks += (
                            f' <span class="noisy" title="{escape(EAGER_NOTE)}">{EAGER_MARK}</span>'
                        )
                        any_eager = True
                    mem = (
                        f'<br><span class="mem">{escape(format_bytes(cell.peak_mem_bytes))}</span>'
                        if cell.peak_mem_bytes is not None
                        else ""
                    )
                    cls = "num best" if cell.best else "num"
                    cells.append(
                        f'<td class="{cls}">{escape(format_ms(cell.latency_ms))} ms'
                        f"{marks}{mem}</td>"
                    )
            body.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(
            f"<table><caption>{escape(table.title)}</caption><thead><tr>{head}</tr>"
            f"</thead><tbody>{''.join(body)}</tbody></table>"
        )
    if parts:
        parts.append(
            '<p class="note">median latency over the peak memory above the inputs; '
            "the fastest of each column is shaded; ! marks a noisy timing "
            "(IQR &gt; 10% of the median)"
            + (f"; {escape(EAGER_NOTE)}" if any_eager else "")
            + ".</p>"
        )
    return "".join(parts) or '<p class="note">no trials</p>'


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "bytes":
        return format_bytes(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def trials_html(results) -> str:
    columns = (
        "variant",
        "phase",
        "dtype",
        "B",
        "Hq",
        "Hkv",
        "Sq",
        "Skv",
        "D",
        "status",
        "latency ms",
        "IQR ms",
        "peak mem",
        "KV cache",
        "rel err",
        "TFLOP/s",
        "GB/s",
        "kernel",
    )
    rows = [
        (
            row_label(r),
            r.get("wl_phase"),
            r.get("wl_dtype"),
            r.get("wl_batch"),
            r.get("wl_heads_q"),
            r.get("wl_heads_kv"),
            r.get("wl_seq_q"),
            r.get("wl_seq_kv"),
            r.get("wl_head_dim"),
            r.get("status"),
            _fmt(r.get("latency_ms")),
            _fmt(r.get("latency_iqr_ms")),
            _fmt(r.get("peak_mem_bytes"), "bytes"),
            _fmt(r.get("kv_cache_bytes"), "bytes"),
            _fmt(r.get("rel_fro_err")),
            _fmt(r.get("tflops")),
            _fmt(r.get("gbps")),
            _fmt(r.get("kernel")),
        )
        for r in trial_rows(results)
    ]
    return (
        "<details><summary>every trial</summary>"
        + html_table(columns, rows, numeric=range(3, 17))
        + "</details>"
    )


def failures_html(results) -> str:
    failed = failures(results)
    if not failed:
        return '<p class="note">no failures</p>'
    return html_table(
        ("variant", "shape", "status", "reason"),
        [(f["label"], f["shape"], f["status"], f["reason"]) for f in failed],
    )


def comparison_html(comparisons) -> str:
    from sdpalab.report.compare import summary_counts

    def ratio(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}x"

    rows = []
    for c in comparisons:
        rows.append(
            f"<tr><td>{escape(c.label)}</td><td>{escape(c.shape)}</td>"
            f'<td class="num">{escape(format_ms(c.base_latency_ms))}</td>'
            f'<td class="num">{escape(format_ms(c.new_latency_ms))}</td>'
            f'<td class="num">{escape(ratio(c.latency_ratio))}</td>'
            f'<td class="num">{escape(ratio(c.mem_ratio))}</td>'
            f'<td class="num">{escape(ratio(c.err_ratio))}</td>'
            f'<td class="{escape(c.verdict)}">{escape(c.verdict)}</td></tr>'
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("variant", "shape", "base ms", "new ms", "latency", "memory", "error", "verdict")
    )
    counts = ", ".join(f"{n} {v}" for v, n in summary_counts(comparisons).items())
    return (
        f"<p>{escape(counts or 'nothing to compare')}; ratios are new / base; a latency "
        "difference within the two runs' IQRs added together is <em>same</em>.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _kv_table(data: dict[str, Any]) -> str:
    rows = []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, list):
            value = " ".join(map(str, value))
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True, default=str)
        rows.append((key, value))
    return html_table(("key", "value"), rows) if rows else '<p class="note">not recorded</p>'


def provenance_html(info: dict[str, Any], results) -> str:
    prov = info.get("provenance")
    if not isinstance(prov, dict):
        prov = next((r.provenance for r in results if getattr(r, "provenance", None)), {})
    parts = [_kv_table(prov or {})]
    command = info.get("argv") or info.get("command") or (prov or {}).get("argv")
    if command:
        text = " ".join(map(str, command)) if isinstance(command, list) else str(command)
        parts.append(f"<p>command:</p><pre>{escape(text)}</pre>")
    ceilings = info.get("ceilings")
    if isinstance(ceilings, dict):
        parts.append("<p>measured ceilings:</p>" + _kv_table(ceilings))
    config = info.get("config")
    rest = {
        k: v
        for k, v in info.items()
        if k not in ("provenance", "argv", "command", "ceilings", "config")
    }
    if config is not None or rest:
        shown = {"config": config, **rest} if config is not None else rest
        parts.append(
            "<details><summary>run.json</summary><pre>"
            + escape(json.dumps(shown, indent=2, sort_keys=True, default=str))
            + "</pre></details>"
        )
    return "".join(parts)
