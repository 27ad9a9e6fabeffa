"""``sdpalab search``, ``pareto`` and ``sensitivity``: the goldilocks commands.

Registered on the app by :mod:`sdpalab.cli`; thin like the rest of the CLI.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sdpalab.cli_common import (
    AddressOption,
    BadInput,
    BusyNotice,
    ExecutorOption,
    StorageOption,
    StudyOption,
    console,
    err_console,
    make_executor,
    note_left_out,
    stop_cleanly,
)

if TYPE_CHECKING:
    from sdpalab.spec import Constraints

_Priority = Annotated[str, typer.Option(help="latency, memory, error or balanced.")]
_MaxMemory = Annotated[
    str | None, typer.Option(help="Limit on the --memory measure, e.g. 600MiB or 2GiB.")
]
_MaxError = Annotated[float | None, typer.Option(help="Limit on the relative error, e.g. 1e-2.")]
_MaxLatency = Annotated[float | None, typer.Option(help="Limit on the median latency, ms.")]
_MaxKl = Annotated[
    float | None,
    typer.Option(
        help="Model workloads: limit on the mean KL from the stock model's next-token "
        "distributions, nats, e.g. 0.01."
    ),
]
_MaxPpl = Annotated[
    float | None,
    typer.Option(
        help="Model workloads: limit on the perplexity increase over the stock model, percent, "
        "e.g. 1."
    ),
]
_AllowApproximate = Annotated[
    bool,
    typer.Option(
        help="Consider variants that compute another mask than the one the workload names "
        "(their error measured against it), as constraints: {allow_approximate: true} does."
    ),
]
_MEASURES = (
    "cache (KV cache bytes), peak (above inputs), total (peak with inputs and cache), "
    "persistent (cache + the step's transient); auto: persistent for decode, total otherwise, "
    "cache where no peak was measured."
)
_MEMORY_HELP = "Memory measure of the objective and of --max-memory: " + _MEASURES
_Json = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Write the fronts and recommendations as one JSON document to stdout (nothing "
        "else goes there).",
    ),
]


def _print_json(doc: dict) -> None:
    from sdpalab.report.search_report import json_document

    typer.echo(json_document(doc))


def _written(path: Path, json_out: bool) -> None:
    # with --json, stdout holds the document only
    (err_console if json_out else console).print(
        f"written: {path}", markup=False, highlight=False, soft_wrap=True
    )


def _constraints(
    base: Constraints,
    max_memory: str | None,
    max_error: float | None,
    max_latency_ms: float | None,
    max_kl: float | None = None,
    max_ppl_increase: float | None = None,
    allow_approximate: bool = False,
) -> Constraints:
    """``base`` (a config's or a run's constraints) with the limits given as flags over it
    (``--allow-approximate`` allows what the base may not)."""
    from sdpalab.explore.objectives import check_constraints
    from sdpalab.spec.config import parse_bytes

    flags = {
        "max_error": max_error,
        "max_latency_ms": max_latency_ms,
        "max_kl": max_kl,
        "max_ppl_increase": max_ppl_increase,
    }
    if max_memory is not None:
        try:
            flags["max_memory"] = parse_bytes(max_memory)
        except ValueError:
            raise BadInput(
                f"--max-memory {max_memory!r} is not valid; write bytes or a size such as "
                "512MiB, 2GiB, 8GB"
            ) from None
    given = {k: v for k, v in flags.items() if v is not None}
    if allow_approximate:
        given["allow_approximate"] = True
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
    max_kl: _MaxKl = None,
    max_ppl_increase: _MaxPpl = None,
    allow_approximate: _AllowApproximate = False,
    resume: Annotated[
        bool,
        typer.Option(
            help="Extend the search (or sweep) in OUT, reusing its trials. Refused for a config "
            "that does not hold every stored trial."
        ),
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace the run OUT already holds.")] = False,
    workers: Annotated[int, typer.Option(help="Worker processes running trials at once.")] = 1,
    seed: Annotated[int, typer.Option(help="Sampler seed.")] = 0,
    priority: _Priority = "latency",
    memory: Annotated[str, typer.Option(help=_MEMORY_HELP)] = "auto",
    json_out: _Json = False,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    storage: StorageOption = None,
    study: StudyOption = None,
) -> None:
    """Search a config's space with Optuna for the front of latency, memory and error; with
    --storage, grow a study shared with other search processes (each with its own OUT)."""
    from sdpalab.explore.recommend import summarize_front
    from sdpalab.explore.search import open_storage
    from sdpalab.explore.search import search as run_search
    from sdpalab.report.progress import progress_callback
    from sdpalab.report.search_report import render_search, search_stats, write_search_report
    from sdpalab.run.executor import use_executor
    from sdpalab.spec.config import load_spec

    engine = make_executor(executor, address)
    spec = load_spec(config)
    if storage is not None:
        open_storage(storage)  # a bad URL or an unreachable database: exit 2 before anything
    constraints = _constraints(
        spec.constraints,
        max_memory,
        max_error,
        max_latency_ms,
        max_kl,
        max_ppl_increase,
        allow_approximate,
    )
    busy = BusyNotice()

    def started(load: dict) -> None:  # the directory is ready; nothing has run
        busy.start(load)
        if not json_out:
            note_left_out(spec)

    progress = progress_callback(err_console if json_out else console)
    with use_executor(engine, spec.device), stop_cleanly(), progress as on_result:
        found = run_search(
            spec,
            out,
            trials=trials,
            sampler=sampler,
            constraints=constraints,
            resume=resume,
            force=force,
            workers=workers,
            seed=seed,
            on_result=on_result,
            on_start=started,
            memory=memory,
            executor=engine,
            storage=storage,
            study=study,
        )
    summary = summarize_front(
        found.results,
        priority=priority,
        objectives=found.objectives,
        constraints=constraints,
        memory=memory,
    )
    if json_out:
        _print_json({"search": search_stats(found), **summary.to_dict()})
    else:
        render_search(console, found, summary)
    _written(write_search_report(found.out, found.results, summary=summary), json_out)
    busy.end(found.results)


def pareto(
    run_dir: Annotated[
        Path | None,
        typer.Argument(help="Run directory (a sweep or a search); with --storage, optional."),
    ] = None,
    priority: _Priority = "latency",
    max_memory: _MaxMemory = None,
    max_error: _MaxError = None,
    max_latency_ms: _MaxLatency = None,
    max_kl: _MaxKl = None,
    max_ppl_increase: _MaxPpl = None,
    allow_approximate: _AllowApproximate = False,
    report: Annotated[
        bool, typer.Option(help="Also write DIR/report.html with the front.")
    ] = False,
    within: Annotated[
        float,
        typer.Option(
            help="Several shapes: show configurations within this fraction of every shape's front."
        ),
    ] = 0.10,
    memory: Annotated[
        str | None, typer.Option(help=_MEMORY_HELP + " Default: the search's, else auto.")
    ] = None,
    json_out: _Json = False,
    storage: StorageOption = None,
    study: Annotated[
        str | None, typer.Option(help="With --storage: the shared study to read.")
    ] = None,
) -> None:
    """Each shape's Pareto front and the recommended configuration, as a Variant to paste, and
    every other result with why it is off the front; with several shapes, the configurations
    that stay near every shape's front. --storage URL --study NAME reads a shared study."""
    from sdpalab.explore.recommend import summarize_front
    from sdpalab.explore.search import search_settings
    from sdpalab.explore.shapes import goldilocks_across_shapes
    from sdpalab.report.search_report import (
        goldilocks_rows,
        render_front,
        render_goldilocks,
        write_search_report,
    )
    from sdpalab.run.rundir import load_results, run_constraints
    from sdpalab.spec import Constraints

    if storage is not None or study is not None:
        from sdpalab.explore.search import study_results

        if storage is None or study is None:
            raise BadInput("a shared study needs both --storage URL and --study NAME")
        results, settings = study_results(storage, study)
        base = Constraints(**settings.get("limits", {}))
        if memory is None:
            memory = settings.get("memory", "auto")
        if report and run_dir is None:
            raise BadInput("--report with --storage needs a DIR to write the report into")
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
    elif run_dir is None:
        raise BadInput("give a run directory, or --storage URL --study NAME")
    else:
        results = load_results(run_dir)
        base = run_constraints(run_dir)
    constraints = _constraints(
        base,
        max_memory,
        max_error,
        max_latency_ms,
        max_kl,
        max_ppl_increase,
        allow_approximate,
    )
    if memory is None:  # what the search optimized, so its front and this one agree
        memory = search_settings(run_dir).get("memory", "auto")
    summary = summarize_front(results, priority=priority, constraints=constraints, memory=memory)
    goldilocks = None
    if len(summary.shapes) > 1:
        goldilocks = goldilocks_across_shapes(
            results, within, include_all=True, constraints=constraints, memory=memory
        )
    if json_out:
        doc = {"run": str(run_dir if storage is None else study), **summary.to_dict()}
        if goldilocks is not None:
            doc["across_shapes"] = {"within": within, "rows": goldilocks_rows(goldilocks)}
        _print_json(doc)
    else:
        render_front(console, summary)
        if goldilocks is not None:
            render_goldilocks(console, goldilocks, within)
    if report:
        _written(write_search_report(run_dir, results, summary=summary), json_out)


def sensitivity(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (a sweep or a search).")],
    method: Annotated[str, typer.Option(help="optuna, salib or both.")] = "both",
    objective: Annotated[
        list[str] | None,
        typer.Option(
            help="Result field to explain (repeatable), e.g. kv_cache_bytes; default "
            "latency_ms, memory (the --memory measure), error (rel_fro_err; a model's "
            "kl_mean_nats where measured)."
        ),
    ] = None,
    report: Annotated[
        bool, typer.Option(help="Also write DIR/report.html with the table.")
    ] = False,
    memory: Annotated[
        str, typer.Option(help="Memory measure the memory objective explains: " + _MEASURES)
    ] = "auto",
) -> None:
    """Which axes drive each objective: Optuna importances and SALib Sobol indices."""
    from sdpalab.explore.objectives import OBJECTIVES
    from sdpalab.explore.sensitivity import sensitivity as analyse
    from sdpalab.report.search_report import render_sensitivity, write_search_report
    from sdpalab.run.rundir import load_results

    results = load_results(run_dir)
    table = analyse(
        results, objectives=tuple(objective or OBJECTIVES), method=method, memory=memory
    )
    render_sensitivity(console, table)
    if report:
        console.print(
            f"written: {write_search_report(run_dir, results, sensitivity=table)}",
            markup=False,
            highlight=False,
        )
