"""``report.html``: one self-contained file per run.

Plots are embedded as base64 ``data:`` URIs and the style is inline; there is no script and
nothing is fetched (a Content-Security-Policy of ``default-src 'none'`` says so to the browser
too). Every string that comes from a user or from torch (run name, labels, mod arguments,
error messages, provenance) goes through :func:`escape`. Other modules add sections through
``extra_sections``: fragments they build must escape their text with :func:`escape` (or use
:func:`html_table`, which does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sdpalab.report.markup import escape, figure_html, html_table
from sdpalab.report.sections import (
    comparison_html,
    failures_html,
    provenance_html,
    summary_html,
    trials_html,
)
from sdpalab.report.tables import counts_line, status_counts
from sdpalab.run.rundir import export, load_results, read_run_info, run_constraints

__all__ = ["escape", "figure_html", "html_table", "make_report", "write_report"]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d2330;
 background:#f6f7f9}
header{background:#1f3a5f;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px;word-break:break-all}
header p{margin:2px 0;opacity:.9}
nav a{color:#cfe0ff;margin-right:14px}
main{padding:8px 28px 40px;max-width:1400px}
section{background:#fff;border:1px solid #dde2ea;border-radius:6px;margin:18px 0;padding:6px 18px 14px}
h2{font-size:18px;border-bottom:2px solid #e7ebf2;padding-bottom:4px}
table{border-collapse:collapse;margin:10px 0 14px;font-size:13px}
caption{text-align:left;font-weight:600;padding:4px 0}
th,td{border:1px solid #dde2ea;padding:4px 8px;vertical-align:top}
th{background:#eef2f8;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.best{background:#dff3e4;font-weight:700}
td.fail{color:#a33;background:#fbeeee}
span.mem{color:#667;font-weight:400;font-size:12px}
span.noisy{color:#b26b00;font-weight:700}
.slower{color:#b00020;font-weight:700}.faster{color:#137333;font-weight:700}
.same{color:#667}.broken{color:#b00020}.fixed{color:#137333}
figure{display:inline-block;margin:10px 18px 10px 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #e3e7ee}
figcaption{font-size:12px;color:#556}
pre{background:#f3f5f8;padding:10px;overflow:auto;font-size:12px;white-space:pre-wrap;
 word-break:break-all}
.note{color:#556}
"""


OUR_PLOTS = (
    "scaling*.png",
    "decode_bandwidth*.png",
    "kv_cache_bytes*.png",
    "pareto*.png",
    "sensitivity*.png",
    "mask_*.png",
)


def _remove_old_plots(plots_dir: Path) -> None:
    # A re-run of the report must not leave plots of data that is gone; other files stay.
    for pattern in OUR_PLOTS:
        for old in plots_dir.glob(pattern):
            old.unlink(missing_ok=True)


def run_name(run_dir: Path, info: dict[str, Any]) -> str:
    """The run's name: ``run.json``'s ``name`` (or its config's), else the directory name."""
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    return str(info.get("name") or config.get("name") or Path(run_dir).resolve().name)


def write_report(
    run_dir: str | Path,
    *,
    extra_sections: Sequence[tuple[str, str]] | None = None,
    results=None,
    comparisons=None,
    compare_name: str | None = None,
    front=None,
    recommendation=None,
    sensitivity=None,
    export_files: bool = True,
    memory: str = "auto",
    constraints=None,
) -> Path:
    """Write ``run_dir/report.html`` (and the plots under ``run_dir/plots``); return its path.

    ``extra_sections``: ``(title, html_fragment)`` pairs appended after the plots; the title is
    escaped here, the fragment must already be safe (built with :func:`escape` /
    :func:`html_table`). ``results``: the run's Results (loaded from the directory when None).
    ``comparisons``: from :func:`sdpalab.report.compare.compare_runs`, shown as a section
    against ``compare_name``. ``front``, ``recommendation``, ``sensitivity``: passed to the
    plots; without ``front`` each shape's front is the one ``sdpalab pareto`` prints, under
    ``constraints`` (default: the run's) and the ``memory`` measure. ``export_files``: also
    write ``results.parquet`` when pyarrow is installed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    if results is None:
        results = load_results(run_dir)
    results = list(results) if not hasattr(results, "columns") else results
    info = read_run_info(run_dir)
    name = run_name(run_dir, info)
    if export_files:
        with contextlib.suppress(ImportError):  # parquet is optional; the CSV is there anyway
            export(run_dir, results)

    from sdpalab.report.plots import render_plots

    if constraints is None:
        constraints = run_constraints(run_dir)
    ceilings = info.get("ceilings") if isinstance(info.get("ceilings"), dict) else None
    _remove_old_plots(run_dir / "plots")
    pngs = render_plots(
        results,
        run_dir / "plots",
        front=front,
        recommendation=recommendation,
        ceilings=ceilings,
        sensitivity=sensitivity,
        memory=memory,
        constraints=constraints,
    )

    sections: list[tuple[str, str, str]] = [
        ("summary", "Summary", summary_html(results) + trials_html(results)),
    ]
    if comparisons is not None:
        title = f"Compared with {compare_name}" if compare_name else "Comparison"
        sections.append(("compare", title, comparison_html(comparisons)))
    sections.append(
        (
            "plots",
            "Plots",
            "".join(figure_html(p) for p in pngs)
            or '<p class="note">no plot applies to these results</p>',
        )
    )
    for i, (title, fragment) in enumerate(extra_sections or []):
        sections.append((f"extra-{i}", str(title), fragment))
    sections.append(("failures", "Failures", failures_html(results)))
    sections.append(
        (
            "provenance",
            "Provenance",
            provenance_html(info, results if isinstance(results, list) else []),
        )
    )

    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{escape(title)}</h2>{content}</section>'
        for sid, title, content in sections
    )
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>sdpalab report: {escape(name)}</title><style>{CSS}</style></head><body>"
        f'<header><h1 id="run-name">{escape(name)}</h1>'
        f"<p>{escape(counts_line(status_counts(results)))} · report written {escape(when)}</p>"
        f"<nav>{nav}</nav></header><main>{body}</main></body></html>\n"
    )
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def make_report(run_dir: str | Path, compare_dir: str | Path | None = None, *, results=None):
    """What ``sdpalab report DIR [--compare OTHER]`` does: load the run (and the baseline),
    compare them, write the report. ``results``: those to report instead of the run's (a
    shared study's, read from its storage). Returns ``(results, comparisons or None, report
    path)``."""
    from sdpalab.report.compare import compare_runs

    results = load_results(run_dir) if results is None else results
    comparisons = None
    if compare_dir is not None:
        comparisons = compare_runs(load_results(compare_dir), results)
    path = write_report(
        run_dir,
        results=results,
        comparisons=comparisons,
        compare_name=None if compare_dir is None else str(compare_dir),
    )
    return results, comparisons, path
