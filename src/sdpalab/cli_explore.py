"""``sdpalab search``, ``pareto`` and ``sensitivity``: the goldilocks commands.

Registered on the app by :mod:`sdpalab.cli`; thin like the rest of the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdpalab.cli_common import console

_Priority = Annotated[str, typer.Option(help="latency, memory, error or balanced.")]
_MaxMemory = Annotated[str | None, typer.Option(help="Limit on the total peak, e.g. 2GiB.")]
_MaxError = Annotated[float | None, typer.Option(help="Limit on the relative error, e.g. 1e-2.")]
_MaxLatency = Annotated[float | None, typer.Option(help="Limit on the median latency, ms.")]


def search(
    config: Annotated[str, typer.Argument(help="Sweep config: a YAML file or a preset name.")],
    trials: Annotated[int, typer.Option(help="New measurements to make (stored points are free).")],
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/<name>-search-<time>).")
    ] = None,
    sampler: Annotated[str, typer.Option(help="nsga2, tpe or gp.")] = "nsga2",
    max_memory: _MaxMemory = None,
    max_error: _MaxError = None,
    max_latency_ms: _MaxLatency = None,
    resume: Annotated[bool, typer.Option(help="Extend the search already in OUT.")] = False,
    workers: Annotated[int, typer.Option(help="Worker processes running trials at once.")] = 1,
    seed: Annotated[int, typer.Option(help="Sampler seed.")] = 0,
    priority: _Priority = "latency",
) -> None:
    """Search a config's space with Optuna for the front of latency, memory and error."""
    from sdpalab.explore.recommend import summarize_front
    from sdpalab.explore.search import search as run_search
    from sdpalab.report.progress import progress_callback
    from sdpalab.report.search_report import render_search

    with progress_callback(console) as on_result:
        found = run_search(
            config,
            out,
            trials=trials,
            sampler=sampler,
            max_memory=max_memory,
            max_error=max_error,
            max_latency_ms=max_latency_ms,
            resume=resume,
            workers=workers,
            seed=seed,
            on_result=on_result,
        )
    summary = summarize_front(
        found.results, priority=priority, objectives=found.objectives, **found.limits
    )
    render_search(console, found, summary)
    from sdpalab.report.search_report import write_search_report

    console.print(
        f"written: {write_search_report(found.out, found.results, summary=summary)}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def pareto(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (a sweep or a search).")],
    priority: _Priority = "latency",
    max_memory: _MaxMemory = None,
    max_error: _MaxError = None,
    max_latency_ms: _MaxLatency = None,
    report: Annotated[
        bool, typer.Option(help="Also write DIR/report.html with the front.")
    ] = False,
    within: Annotated[
        float,
        typer.Option(
            help="Several shapes: show configurations within this fraction of every shape's front."
        ),
    ] = 0.10,
) -> None:
    """Each shape's Pareto front and the recommended configuration, as a Variant to paste;
    with several shapes, the configurations that stay near every shape's front."""
    from sdpalab.explore.objectives import run_limits
    from sdpalab.explore.recommend import summarize_front
    from sdpalab.explore.shapes import goldilocks_across_shapes
    from sdpalab.report.load import load_results
    from sdpalab.report.search_report import render_front, render_goldilocks, write_search_report

    results = load_results(run_dir)
    limits = {
        "constraints": run_limits(run_dir),
        "max_memory": max_memory,
        "max_error": max_error,
        "max_latency_ms": max_latency_ms,
    }
    summary = summarize_front(results, priority=priority, **limits)
    render_front(console, summary)
    if len(summary.shapes) > 1:
        render_goldilocks(
            console, goldilocks_across_shapes(results, within, include_all=True, **limits), within
        )
    if report:
        console.print(
            f"written: {write_search_report(run_dir, results, summary=summary)}",
            markup=False,
            highlight=False,
        )


def sensitivity(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (a sweep or a search).")],
    method: Annotated[str, typer.Option(help="optuna, salib or both.")] = "both",
    objective: Annotated[
        list[str] | None,
        typer.Option(
            help="Result field to explain (repeatable); default "
            "latency_ms, peak_mem_total_bytes, rel_fro_err."
        ),
    ] = None,
    report: Annotated[
        bool, typer.Option(help="Also write DIR/report.html with the table.")
    ] = False,
) -> None:
    """Which axes drive each objective: Optuna importances and SALib Sobol indices."""
    from sdpalab.explore.objectives import OBJECTIVES
    from sdpalab.explore.sensitivity import sensitivity as analyse
    from sdpalab.report.load import load_results
    from sdpalab.report.search_report import render_sensitivity, write_search_report

    results = load_results(run_dir)
    table = analyse(results, objectives=tuple(objective or OBJECTIVES), method=method)
    render_sensitivity(console, table)
    if report:
        console.print(
            f"written: {write_search_report(run_dir, results, sensitivity=table)}",
            markup=False,
            highlight=False,
        )
