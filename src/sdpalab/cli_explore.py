"""``sdpalab search``, ``pareto`` and ``sensitivity``: the goldilocks commands.

Registered on the app by :mod:`sdpalab.cli`; thin like the rest of the CLI.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sdpalab.cli_common import BadInput, console

if TYPE_CHECKING:
    from sdpalab.spec import Constraints

_Priority = Annotated[str, typer.Option(help="latency, memory, error or balanced.")]
_MaxMemory = Annotated[str | None, typer.Option(help="Limit on the total peak, e.g. 2GiB.")]
_MaxError = Annotated[float | None, typer.Option(help="Limit on the relative error, e.g. 1e-2.")]
_MaxLatency = Annotated[float | None, typer.Option(help="Limit on the median latency, ms.")]


def _constraints(
    base: Constraints, max_memory: str | None, max_error: float | None, max_latency_ms: float | None
) -> Constraints:
    """``base`` (a config's or a run's constraints) with the limits given as flags over it."""
    from sdpalab.explore.objectives import check_constraints
    from sdpalab.spec.config import parse_bytes

    flags = {"max_error": max_error, "max_latency_ms": max_latency_ms}
    if max_memory is not None:
        try:
            flags["max_memory"] = parse_bytes(max_memory)
        except ValueError:
            raise BadInput(
                f"--max-memory {max_memory!r} is not valid; write bytes or a size such as "
                "512MiB, 2GiB, 8GB"
            ) from None
    given = {k: v for k, v in flags.items() if v is not None}
    return check_constraints(dataclasses.replace(base, **given))


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
    from sdpalab.spec.config import load_spec

    spec = load_spec(config)
    constraints = _constraints(spec.constraints, max_memory, max_error, max_latency_ms)
    with progress_callback(console) as on_result:
        found = run_search(
            spec,
            out,
            trials=trials,
            sampler=sampler,
            constraints=constraints,
            resume=resume,
            workers=workers,
            seed=seed,
            on_result=on_result,
        )
    summary = summarize_front(
        found.results, priority=priority, objectives=found.objectives, constraints=constraints
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
    from sdpalab.explore.recommend import summarize_front
    from sdpalab.explore.shapes import goldilocks_across_shapes
    from sdpalab.report.search_report import render_front, render_goldilocks, write_search_report
    from sdpalab.run.rundir import load_results, run_constraints

    results = load_results(run_dir)
    constraints = _constraints(run_constraints(run_dir), max_memory, max_error, max_latency_ms)
    summary = summarize_front(results, priority=priority, constraints=constraints)
    render_front(console, summary)
    if len(summary.shapes) > 1:
        goldilocks = goldilocks_across_shapes(
            results, within, include_all=True, constraints=constraints
        )
        render_goldilocks(console, goldilocks, within)
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
    from sdpalab.report.search_report import render_sensitivity, write_search_report
    from sdpalab.run.rundir import load_results

    results = load_results(run_dir)
    table = analyse(results, objectives=tuple(objective or OBJECTIVES), method=method)
    render_sensitivity(console, table)
    if report:
        console.print(
            f"written: {write_search_report(run_dir, results, sensitivity=table)}",
            markup=False,
            highlight=False,
        )
