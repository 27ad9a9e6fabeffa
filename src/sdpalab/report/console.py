"""Console rendering with rich: result tables, run summaries, doctor, listings, comparisons.

Everything here takes a ``rich.console.Console`` and prints to it; nothing returns text for
other modules to parse. Strings from users or from torch (labels, reasons, paths) are printed
with markup off, so a ``[bold]`` in an error message stays literal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table as RichTable
from rich.text import Text

from sdpalab.report.tables import (
    EAGER_MARK,
    EAGER_NOTE,
    SHAPE,
    counts_line,
    failures,
    format_ms,
    group_tables,
    shape_of,
    status_counts,
)
from sdpalab.units import format_bytes

NOISY_MARK = "!"
STATUS_STYLE = {
    "ok": "green",
    "unsupported": "yellow",
    "oom": "red",
    "timeout": "red",
    "crash": "red",
    "numerical_fail": "magenta",
    "error": "red",
}


def _cell_text(cell) -> Text:
    if cell is None:
        return Text("")
    if cell.status != "ok":
        return Text(cell.status, style=f"dim {STATUS_STYLE.get(cell.status, 'red')}")
    text = Text(format_ms(cell.latency_ms), style="bold green" if cell.best else "")
    if cell.noisy:
        text.append(f" {NOISY_MARK}", style="bold yellow")
    if cell.eager:
        text.append(f" {EAGER_MARK}", style="bold magenta")
    if cell.latency_fwd_ms is not None and cell.latency_bwd_ms is not None:
        fwd, bwd = format_ms(cell.latency_fwd_ms), format_ms(cell.latency_bwd_ms)
        text.append(f"\n= {fwd} + {bwd}", style="dim")
    if cell.peak_mem_bytes is not None:
        text.append(f"\n{format_bytes(cell.peak_mem_bytes)}", style="dim")
    return text


def _column_chunks(console: Console, table) -> list[list[str]]:
    """``table``'s shape columns in groups that fit the console beside the variant column
    (folded past 40 characters): a wide table wraps into several, no cell is cut."""
    first = min(max((len(r) for r in table.rows), default=7), 40) + 3 + 1
    chunks: list[list[str]] = [[]]
    room = console.width - first
    for column in table.columns:
        cells = [_cell_text(table.cells.get((row, column))) for row in table.rows]
        longest = max([len(column), *(max(map(len, c.plain.split("\n"))) for c in cells)])
        if chunks[-1] and longest + 3 > room:
            chunks.append([])
            room = console.width - first
        chunks[-1].append(column)
        room -= longest + 3
    return chunks


def render_results(console: Console, results, title: str | None = None) -> None:
    """Print results as Compare-style tables (rows: variants, columns: shapes; each cell the
    median latency in ms over the peak memory above the inputs), the fastest of each column in
    bold green, noisy timings marked ``!``; then the count of trials by status and a table of
    the failures with their reasons. ``results``: list of Result or the flat DataFrame."""
    tables = group_tables(results)
    if title:
        console.print(Text(title, style="bold"))
    any_noisy = any_eager = False
    for table in tables:
        for row in table.rows:
            cells = [table.cells.get((row, column)) for column in table.columns]
            any_noisy |= any(c is not None and c.noisy and c.status == "ok" for c in cells)
            any_eager |= any(c is not None and c.eager and c.status == "ok" for c in cells)
        for part, columns in enumerate(_column_chunks(console, table)):
            title = table.title + (f" (continued, {part + 1})" if part else "")
            rich_table = RichTable(title=title, title_style="bold", show_lines=False)
            rich_table.add_column("variant", style="cyan", overflow="fold", max_width=40)
            for column in columns:
                rich_table.add_column(column, justify="right", no_wrap=True)
            for row in table.rows:
                cells = [table.cells.get((row, column)) for column in columns]
                rich_table.add_row(Text(row), *(_cell_text(c) for c in cells))
            console.print(rich_table)
    if tables:
        legend = "latency ms (median) over peak memory above inputs; fastest per column in bold"
        if any_noisy:
            legend += f"; {NOISY_MARK} = noisy (IQR > 10% of median)"
        if any_eager:
            legend += f"; {EAGER_NOTE}"
        console.print(Text(legend, style="dim"))
    counts = status_counts(results)
    line = Text(counts_line(counts))
    console.print(line)
    failed = failures(results)
    if failed:
        table = RichTable(title="failures", title_style="bold red")
        for name in ("variant", "shape", "status", "reason"):
            table.add_column(name, overflow="fold")
        for f in failed:
            table.add_row(
                Text(f["label"]),
                Text(f["shape"]),
                Text(f["status"], style=STATUS_STYLE.get(f["status"], "red")),
                Text(f["reason"]),
            )
        console.print(table)


def render_paths(console: Console, out: str | Path) -> None:
    """Print which of a run directory's files exist (results, report, plots)."""
    out = Path(out)
    names = ("results.sqlite", "results.csv", "results.parquet", "run.json", "report.html")
    for name in names:
        if (out / name).exists():
            console.print(Text(f"  {out / name}"))
    plots = sorted((out / "plots").glob("*.png")) if (out / "plots").is_dir() else []
    if plots:
        console.print(Text(f"  {out / 'plots'}/ ({len(plots)} plots)"))


def render_run(console: Console, run: Any) -> None:
    """A finished run (the engine's Results: ``.results``, ``.out``): its tables, then the
    files it wrote."""
    out = getattr(run, "out", None)
    name = getattr(run, "name", None) or (Path(out).name if out else None)
    render_results(console, list(getattr(run, "results", []) or []), title=name)
    if out:
        console.print(Text("written:", style="bold"))
        render_paths(console, out)


def render_doctor(console: Console, report: dict[str, Any]) -> None:
    """``sdpalab doctor``: device, backends × dtypes (ok or why not), ceilings, provenance.
    Missing keys are shown as unknown, never an error."""
    report = report or {}
    device = report.get("device", "?")
    console.print(
        Text(f"device: {device} ({report.get('device_name') or 'unknown'})", style="bold")
    )
    dtypes = report.get("dtypes")
    if dtypes:
        console.print(Text(f"dtypes: {', '.join(map(str, dtypes))}"))
    backends = report.get("backends") or {}
    if backends:
        table = RichTable(title="backends", title_style="bold")
        table.add_column("backend", style="cyan", no_wrap=True)
        table.add_column("status", overflow="fold")
        for name, status in backends.items():
            status = str(status)
            style = "green" if status == "ok" else "yellow" if status.startswith("unsup") else "red"
            table.add_row(Text(str(name)), Text(status, style=style))
        console.print(table)
    ceilings = report.get("ceilings")
    if isinstance(ceilings, dict) and ceilings:
        tf, bw = ceilings.get("matmul_tflops"), ceilings.get("copy_gbps")
        console.print(
            Text(
                f"ceilings: matmul {tf:.3g} TFLOP/s, copy {bw:.4g} GB/s"
                if isinstance(tf, int | float) and isinstance(bw, int | float)
                else f"ceilings: {ceilings}"
            )
        )
        note = report.get("ceilings_note")  # when, under what load, why measured again
        if note or ceilings.get("measured_at"):
            note = note or f"measured {ceilings['measured_at']}"
            console.print(Text(f"  {note} ({ceilings.get('dtype', '?')})", style="dim"))
    else:
        console.print(
            Text("ceilings: not measured (run `sdpalab doctor --remeasure`)", style="dim")
        )
    prov = report.get("provenance") or {}
    if prov:
        table = RichTable(title="provenance", title_style="bold", show_header=False)
        table.add_column("key", style="dim")
        table.add_column("value", overflow="fold")
        for key, value in prov.items():
            if value is not None:
                text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
                table.add_row(Text(str(key)), Text(text))
        console.print(table)


def render_listing(console: Console, what: str) -> None:
    """``sdpalab list variants|mods|presets``."""
    if what == "variants":
        from sdpalab import spec
        from sdpalab.attention.backends import backend_names

        table = RichTable(title="variant axes", title_style="bold")
        table.add_column("axis", style="cyan")
        table.add_column("values", overflow="fold")
        from sdpalab.attention.mods import MODS

        axes = [
            ("backend", backend_names()),
            ("mod", tuple(MODS)),
            ("kv_cache", spec.KV_CACHES),
            ("kv_quant", spec.KV_QUANTS),
            ("weight_quant", spec.WEIGHT_QUANTS),
            ("dtype (workload)", tuple(spec.DTYPES)),
            ("phase (workload)", spec.PHASES),
        ]
        for axis, values in axes:
            table.add_row(axis, ", ".join(values))
        console.print(table)
        kv = RichTable(title="kv_args", title_style="bold")
        kv.add_column("key", style="cyan")
        kv.add_column("meaning", overflow="fold")
        for key, text in spec.KV_ARGS.items():
            kv.add_row(key, Text(text))
        console.print(kv)
    elif what == "mods":
        from sdpalab.attention.mods import MODS, REQUIRED

        table = RichTable(title="mods", title_style="bold", show_lines=True)
        table.add_column("mod", style="cyan", no_wrap=True)
        table.add_column("what", overflow="fold")
        table.add_column("parameters", overflow="fold")
        for name, mod in MODS.items():
            params = "\n".join(
                f"{key}: {typ.__name__}"
                + (" (required)" if default is REQUIRED else f" = {default!r}")
                + f" — {text}"
                for key, (typ, default, text) in mod.params.items()
            )
            table.add_row(name, Text(mod.doc), Text(params or "-"))
        console.print(table)
    elif what == "presets":
        try:
            from sdpalab.spec.config import list_presets
        except ImportError:
            console.print(
                Text(
                    "presets are not available: the run engine (sdpalab.config) is not installed",
                    style="yellow",
                )
            )
            return
        table = RichTable(title="presets", title_style="bold")
        table.add_column("preset", style="cyan", no_wrap=True)
        table.add_column("description", overflow="fold")
        for name, description in list_presets():
            table.add_row(Text(str(name)), Text(str(description)))
        console.print(table)
    else:
        raise ValueError(f"list {what!r} is not valid; choose one of: variants, mods, presets")


def render_comparison(console: Console, comparisons, *, only_changed: bool | None = None) -> None:
    """Print a comparison of two runs (from :func:`sdpalab.report.compare.compare_runs`): per
    configuration the base and new latency, the ratios new / base and the verdict. Shape
    fields shared by every row go in the title. ``only_changed`` leaves out the ``same`` rows
    (by default when there are more than 40 rows); the count line still counts them."""
    from sdpalab.report.compare import VERDICT_STYLE, summary_counts

    counts = summary_counts(comparisons)
    if only_changed is None:
        only_changed = len(comparisons) > 40
    if only_changed:
        comparisons = [c for c in comparisons if c.verdict != "same"]
    shapes = [c.shape.split() for c in comparisons]
    shared = set.intersection(*map(set, shapes)) if shapes else set()
    fixed = [t for t in shapes[0] if t in shared] if shapes else []
    table = RichTable(
        title=" · ".join(["compare (new / base)", *([" ".join(fixed)] if fixed else [])]),
        title_style="bold",
    )
    for name in ("variant", "shape", "base ms", "new ms", "latency", "memory", "error", "verdict"):
        table.add_column(
            name,
            justify="left" if name in ("variant", "shape", "verdict") else "right",
            overflow="fold",
        )

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    for c, shape in zip(comparisons, shapes, strict=True):
        table.add_row(
            Text(c.label),
            Text(" ".join(t for t in shape if t not in shared) or "-"),
            format_ms(c.base_latency_ms),
            format_ms(c.new_latency_ms),
            ratio(c.latency_ratio),
            ratio(c.mem_ratio),
            ratio(c.err_ratio),
            Text(c.verdict, style=VERDICT_STYLE.get(c.verdict, "")),
        )
    if comparisons:
        console.print(table)
    line = ", ".join(f"{n} {v}" for v, n in counts.items()) or "nothing to compare"
    console.print(
        Text(line + (" (same rows not shown)" if only_changed and "same" in counts else ""))
    )


def render_dry_run(console: Console, estimate: Any) -> None:
    """``sdpalab sweep --dry-run``: the trials (how many, and per grid a table of labels by
    shapes, each cell the trial's estimated time) and the estimate of the whole run."""
    from sdpalab.explore.estimate import duration_text

    spec, trials = estimate.spec, estimate.trials
    here = sum(t.unsupported is not None for t in trials)
    left = len(spec.left_out())
    notes = [f"{left} left out (can run nowhere)"] if left else []
    notes += [f"{here} unsupported here (stored as such, not run)"] if here else []
    console.print(
        Text(f"{spec.name}: {len(trials)} trials" + (f"; {'; '.join(notes)}" if notes else ""))
    )
    grids: dict[str, list] = {}
    for trial in trials:
        grids.setdefault(trial.grid, []).append(trial)
    for name, members in grids.items():
        shapes = [shape_of({f"wl_{k}": v for k, v in t.workload_spec.items()}) for t in members]
        keys = [short for _, short in SHAPE]
        varying = [k for k in keys if len({str(s[k]) for s in shapes}) > 1]
        fixed = [k for k in keys if k not in varying]
        columns = list(dict.fromkeys(_shape_text(s, varying) for s in shapes))
        dtypes = {t.workload_spec.get("dtype") for t in members}
        phases = {t.workload_spec.get("phase") for t in members}
        parts = [name, *map(str, sorted(phases - {None})), *map(str, sorted(dtypes - {None}))]
        title = " · ".join(dict.fromkeys([*parts, _shape_text(shapes[0], fixed)]))
        table = RichTable(title=title, title_justify="left", title_style="bold")
        table.add_column("variant", overflow="fold")
        for column in columns:
            table.add_column(column, justify="right")
        rows: dict[str, dict[str, str]] = {}
        for trial, shape in zip(members, shapes, strict=True):
            label = trial.label + (f" [{trial.workload_spec['dtype']}]" if len(dtypes) > 1 else "")
            seconds = estimate.seconds[trial.trial_id]
            cell = "unsupported" if trial.unsupported is not None else _seconds_text(seconds)
            rows.setdefault(label, {})[_shape_text(shape, varying)] = cell
        for label, cells in rows.items():
            table.add_row(Text(label), *(cells.get(c, "") for c in columns))
        console.print(table)
    workers = f"{estimate.workers} worker" + ("s" if estimate.workers != 1 else "")
    console.print(
        Text(
            f"estimate: about {duration_text(estimate.total_s)} with {workers} (cells: seconds "
            f"per trial; from {estimate.basis}); nothing was run or written"
        )
    )


def _shape_text(shape: dict[str, Any], keys: list[str]) -> str:
    return " ".join(f"{k}={shape[k]}" for k in keys if shape.get(k) is not None) or "-"


def _seconds_text(seconds: float) -> str:
    return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"


def render_plan(console: Console, rows: list[dict[str, Any]], title: str) -> None:
    """``sdpalab plan``: cache size per KV quantization, from the analytic memory model."""

    table = RichTable(title=title, title_justify="left")
    for name in ("kv_cache", "kv_quant", "per token", "total", "vs bf16"):
        table.add_column(name, justify="left" if name.startswith("kv") else "right")
    for row in rows:
        table.add_row(
            row["kv_cache"],
            row["kv_quant"],
            format_bytes(row["bytes_per_token"]),
            format_bytes(row["total_bytes"]),
            f"{row['ratio_to_bf16']:.3f}",
        )
    console.print(table)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _agreement_cell(bench: Any, run: Any) -> str:
    if run is bench.runs[0]:
        return "stock"
    if bench.kind == "encoder":
        return _num(run.embedding_cosine, ".6f")
    return f"{_num(run.token_match, '.3f')} / {_num(run.step_match, '.3f')}"


def render_model_bench(console: Console, bench: Any) -> None:
    """``sdpalab model``: one row per run of a :class:`~sdpalab.run.model_trial.ModelBench`;
    names that do not fit the terminal fold, none is cut."""
    # two-line headers keep the number columns narrow, so a 100-column terminal has room
    agreement = "token / step\nmatch" if bench.kind == "decoder" else "embedding\ncos"
    columns = ["run", "attention", "cache", "status", "prefill\nms", "decode\nms/tok", "tok/s"]
    columns += ["peak\nMiB", "KV\nMiB", agreement]
    rows = []
    for run in bench.runs:
        mib = [None if b is None else b / 2**20 for b in (run.peak_mem_bytes, run.kv_cache_bytes)]
        status = run.status if run.status == "ok" else f"{run.status}: {run.reason}"
        timing = [run.prefill_ms, run.decode_ms_per_token, run.tokens_per_s, *mib]
        cells = [
            _num(x, f) for x, f in zip(timing, (".1f", ".2f", ".1f", ".2f", ".3f"), strict=True)
        ]
        rows.append([run.label, run.attn_implementation, run.cache, status, *cells])
        rows[-1].append(_agreement_cell(bench, run))
    title = f"{bench.model} ({bench.kind}, {bench.device}, {bench.dtype})"
    if getattr(bench, "prompt", ""):
        title += f"\nprompt: {bench.prompt}, {bench.new_tokens} tokens generated"
    shown = RichTable(title=title)
    for i, name in enumerate(columns):  # fit the terminal: names fold, numbers never do
        if 4 <= i < len(columns) - 1:
            shown.add_column(name, justify="right", no_wrap=True)
        else:
            shown.add_column(name, overflow="fold")
    for row in rows:
        shown.add_row(*row)
    console.print(shown)


def _signed(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, "+" + fmt)


def render_quality(console: Console, report: Any) -> None:
    """``sdpalab quality``: one row per run of a :class:`~sdpalab.run.quality.QualityReport`,
    the reference first; perplexity changes with their paired 95 % interval."""
    columns = ["run", "cache", "status", "ppl", "Δppl [95% CI]", "Δppl %", "KL mean", "KL max"]
    columns += ["top-1", "KV cache", "vs ref", "eval s"]
    ref_bytes = report.reference.kv_cache_bytes
    shown = RichTable(
        *columns,
        title=(
            f"{report.model} on {report.text}: {report.windows} windows x ({report.context} "
            f"context + {report.eval_tokens} scored), chunk {report.chunk}, {report.device} "
            f"{report.dtype}"
        ),
    )
    for run in report.runs:
        status = run.status if run.status == "ok" else f"{run.status}: {run.reason}"
        cells = [run.label, run.cache, status]
        if run.status == "ok":
            ci = f"{_signed(run.ppl_delta, '.3f')} [{_signed(run.ppl_delta_lo, '.3f')}, "
            ci += f"{_signed(run.ppl_delta_hi, '.3f')}]"
            ratio = None
            if run is not report.reference and ref_bytes and run.kv_cache_bytes:
                ratio = ref_bytes / run.kv_cache_bytes
            cells += [
                _num(run.perplexity, ".3f"),
                ci,
                _signed(run.ppl_delta_pct, ".2f"),
                _num(run.kl_mean_nats, ".5f"),
                _num(run.kl_max_nats, ".4f"),
                _num(run.top1_agreement, ".4f"),
                format_bytes(run.kv_cache_bytes),
                "-" if ratio is None else f"{ratio:.2f}x smaller",
                _num(run.eval_s, ".1f"),
            ]
        else:
            cells += ["-"] * (len(columns) - 3)
        shown.add_row(*map(Text, cells))
    # print(width=) cannot exceed the console's: measure the table on a wide one first
    wide = Console(width=10_000)
    needed = Measurement.get(wide, wide.options, shown).maximum
    Console(width=max(console.width, needed)).print(shown)
