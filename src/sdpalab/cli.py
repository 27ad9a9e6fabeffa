"""The ``sdpalab`` command line. Thin: parse, call one library function, render.

Exit codes: 0 ok, 2 bad input (one line naming what is wrong and what is valid), 1 internal
error (one line; ``SDPALAB_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find the attention configuration (kernel, mask, KV cache, quantization) that fits "
    "your workload, measured against a float64 oracle.",
)
console = Console()
err_console = Console(stderr=True)


class BadInput(Exception):
    """Raised by commands for user errors; becomes exit code 2 with one line."""


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/demo-<time>).")] = None,
    quick: Annotated[bool, typer.Option(help="Smaller sizes (seconds, for tests).")] = False,
) -> None:
    """Run a small preset on this machine: prefill and decode, every kernel it has."""
    from sdpalab.demo import run_demo
    from sdpalab.report.progress import progress_callback

    with progress_callback(console) as on_result:
        run = run_demo(out, quick=quick, on_result=on_result)
    from sdpalab.report.console import render_run

    render_run(console, run)


@app.command()
def doctor(
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    remeasure: Annotated[bool, typer.Option(help="Measure the ceilings again.")] = False,
) -> None:
    """What this machine can run, and its measured ceilings (matmul rate, copy bandwidth)."""
    from sdpalab.doctor import doctor_report
    from sdpalab.report.console import render_doctor

    render_doctor(console, doctor_report(device, remeasure=remeasure))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (results.sqlite or results.csv).")],
    compare: Annotated[
        Path | None, typer.Option(help="Baseline run directory to compare against.")
    ] = None,
    fail_if_slower: Annotated[
        str | None,
        typer.Option(help="With --compare: exit 1 if a trial is slower by more than this (10%)."),
    ] = None,
) -> None:
    """Write DIR/report.html and DIR/plots, print the tables; compare with another run."""
    from sdpalab.report.compare import parse_threshold, slower_than
    from sdpalab.report.console import render_comparison, render_paths, render_results
    from sdpalab.report.html import make_report

    threshold = None if fail_if_slower is None else parse_threshold(fail_if_slower)
    if threshold is not None and compare is None:
        raise BadInput("--fail-if-slower needs --compare OTHER_DIR (the baseline run)")
    results, comparisons, _ = make_report(run_dir, compare)
    render_results(console, results, title=str(run_dir))
    if comparisons is not None:
        render_comparison(console, comparisons)
    console.print("written:")
    render_paths(console, run_dir)
    slow = [] if threshold is None else slower_than(comparisons, threshold)
    if slow:
        worst = max(slow, key=lambda c: c.latency_ratio)
        err_console.print(
            f"{len(slow)} trial(s) slower than {fail_if_slower} beyond noise; worst: "
            f"{worst.label} [{worst.shape}] {worst.latency_ratio:.2f}x",
            markup=False,
            highlight=False,
        )
        raise SystemExit(1)  # typer.Exit(1) is swallowed under standalone_mode=False


@app.command()
def sweep(
    config: Annotated[str, typer.Argument(help="Sweep config: a YAML file or a preset name.")],
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<name>-<time>).")] = None,
    resume: Annotated[bool, typer.Option(help="Run only the trials OUT has no row for.")] = False,
    workers: Annotated[int, typer.Option(help="Worker processes running trials at once.")] = 1,
) -> None:
    """Run every trial of a config's grid; failures are recorded, never fatal."""
    from sdpalab.config import load_spec
    from sdpalab.explore.grid import sweep as run_sweep
    from sdpalab.report.console import render_run
    from sdpalab.report.progress import progress_callback

    if workers < 1:
        raise BadInput(f"--workers {workers} is not valid; give 1 or more")
    spec = load_spec(config)
    with progress_callback(console) as on_result:
        run = run_sweep(spec, out, resume=resume, workers=workers, on_result=on_result)
    render_run(console, run)


@app.command("list")
def list_(
    what: Annotated[str, typer.Argument(help="variants, mods or presets")] = "variants",
) -> None:
    """List the axes and their values, the mods with their parameters, or the presets."""
    from sdpalab.report.console import render_listing

    if what not in ("variants", "mods", "presets"):
        raise BadInput(f"list {what!r} is not valid; choose one of: variants, mods, presets")
    render_listing(console, what)


reproduce_app = typer.Typer(no_args_is_help=True, help="Reproduce a published study, correctly.")
app.add_typer(reproduce_app, name="reproduce")


@reproduce_app.command("case-study")
def reproduce_case_study(
    out: Annotated[Path, typer.Option(help="Run directory to write.")],
    quick: Annotated[bool, typer.Option(help="First sizes only (for CI).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
) -> None:
    """The SDPA optimization case study's three experiments as [B, H, S, D], its published
    figures beside ours, and what it measured wrongly, each shown by a measurement."""
    from rich.table import Table
    from rich.text import Text

    from sdpalab.casestudy import run_case_study

    def progress(row) -> None:
        console.print(row.result.summary(), markup=False, soft_wrap=True)

    run = run_case_study(out, quick=quick, device=device, on_result=progress)
    wide = Console(width=max(console.width, 200))  # eleven columns; print(width=) can't widen
    for table in run.tables:
        shown = Table(*table.columns, title=table.title, show_lines=True)
        for row in table.rows:
            shown.add_row(*map(Text, row))  # cells hold "[B, H, S, D]": text, not markup
        wide.print(shown)
    console.print("written:")
    for path in run.paths.values():
        console.print(f"  {path}", markup=False, soft_wrap=True)  # a path is never broken


def main() -> None:
    """Entry point: run the app with the project's exit-code contract."""
    try:
        app(standalone_mode=False)
    except (BadInput, ValueError, FileNotFoundError) as err:
        err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as done:
        sys.exit(getattr(done, "exit_code", getattr(done, "code", 0)) or 0)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as err:  # internal error: one line, traceback on request
        import click

        if isinstance(err, click.exceptions.UsageError):
            err_console.print(f"error: {err.format_message()}", markup=False, highlight=False,
                              soft_wrap=True)
            sys.exit(2)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(130)
        if os.environ.get("SDPALAB_DEBUG"):
            raise
        err_console.print(
            f"internal error: {type(err).__name__}: {err} (set SDPALAB_DEBUG=1 for the traceback)",
            markup=False,
            highlight=False,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
