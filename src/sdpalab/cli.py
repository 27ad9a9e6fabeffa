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

from sdpalab.cli_common import BadInput, console, err_console
from sdpalab.cli_explore import pareto, search, sensitivity

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find the attention configuration (kernel, mask, KV cache, quantization) that fits "
    "your workload, measured against a float64 oracle.",
)


@app.command()
def demo(
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/demo-<time>).")
    ] = None,
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
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/<name>-<time>).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Run only the trials OUT has no row for.")] = False,
    workers: Annotated[int, typer.Option(help="Worker processes running trials at once.")] = 1,
) -> None:
    """Run every trial of a config's grid; failures are recorded, never fatal."""
    from sdpalab.explore.grid import sweep as run_sweep
    from sdpalab.report.console import render_run
    from sdpalab.report.progress import progress_callback
    from sdpalab.spec.config import load_spec

    if workers < 1:
        raise BadInput(f"--workers {workers} is not valid; give 1 or more")
    spec = load_spec(config)
    with progress_callback(console) as on_result:
        run = run_sweep(spec, out, resume=resume, workers=workers, on_result=on_result)
    from sdpalab.report.html import write_report

    write_report(run.out, results=run.results)
    render_run(console, run)


for _command in (search, pareto, sensitivity):
    app.command()(_command)


def _tokens(text: str) -> int:
    """``4096``, ``32k`` or ``1M`` tokens."""
    units = {"k": 1024, "m": 1024**2}
    value = text.strip().lower()
    try:
        number = int(value[:-1]) * units[value[-1]] if value[-1:] in units else int(value)
    except (ValueError, IndexError):
        raise BadInput(
            f"--context {text!r} is not a token count; use e.g. 4096, 32k or 1M"
        ) from None
    if number <= 0:
        raise BadInput(f"--context {text!r} must be positive")
    return number


@app.command()
def plan(
    heads_kv: Annotated[int, typer.Option(help="KV heads per layer.")],
    head_dim: Annotated[int, typer.Option(help="Head dimension.")],
    layers: Annotated[int, typer.Option(help="Decoder layers.")] = 1,
    context: Annotated[str, typer.Option(help="Tokens per sequence: 4096, 32k, 1M.")] = "4096",
    batch: Annotated[int, typer.Option(help="Sequences.")] = 1,
    dtype: Annotated[
        str, typer.Option(help="Compute dtype of the unquantized cache.")
    ] = "bfloat16",
    kv_cache: Annotated[str, typer.Option(help="static, dynamic, sliding or paged.")] = "static",
    kv_quant: Annotated[
        list[str] | None, typer.Option(help="Only these quantizations (repeatable).")
    ] = None,
    window: Annotated[int | None, typer.Option(help="sliding: ring length.")] = None,
    page_size: Annotated[int | None, typer.Option(help="paged: tokens per page.")] = None,
) -> None:
    """KV cache size per token and in total for each quantization, before running anything."""
    from sdpalab.attention.kvplan import plan_table
    from sdpalab.report.console import render_plan
    from sdpalab.spec import KV_CACHES, KV_QUANTS

    for name, value in (
        ("--heads-kv", heads_kv),
        ("--head-dim", head_dim),
        ("--layers", layers),
        ("--batch", batch),
    ):
        if value <= 0:
            raise BadInput(f"{name} {value} must be positive")
    if kv_cache not in KV_CACHES[1:]:
        raise BadInput(
            f"--kv-cache {kv_cache!r} is not valid; choose one of: {', '.join(KV_CACHES[1:])}"
        )
    if kv_cache == "sliding" and window is None:
        raise BadInput("--kv-cache sliding needs --window")
    extra = {k: v for k, v in (("window", window), ("page_size", page_size)) if v is not None}
    tokens = _tokens(context)
    rows = plan_table(
        heads_kv=heads_kv,
        head_dim=head_dim,
        layers=layers,
        context=tokens,
        batch=batch,
        dtype=dtype,
        kv_quants=tuple(kv_quant or KV_QUANTS),
        kv_cache=kv_cache,
        **extra,
    )
    title = (
        f"KV cache: {layers} layers x {heads_kv} KV heads x D={head_dim}, {tokens} tokens x "
        f"batch {batch}, {dtype} (analytic model)"
    )
    render_plan(console, rows, title)


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


@app.command("model")
def model_(
    model: Annotated[
        str, typer.Argument(help="minilm, tiny-llama, or a local model dir / config.json")
    ],
    backend: Annotated[
        str, typer.Option(help="Kernel: math, flash, efficient, cudnn, auto, flex, eager")
    ] = "auto",
    mod: Annotated[
        str, typer.Option(help="Mod (none: the model's own causal or full mask)")
    ] = "none",
    mod_args: Annotated[str, typer.Option(help='JSON, e.g. {"window": 256}')] = "{}",
    kv_cache: Annotated[str, typer.Option(help="none, dynamic, static, sliding or paged")] = "none",
    kv_quant: Annotated[str, typer.Option(help="none, int8, int4, fp8, kivi2 or kivi4")] = "none",
    kv_args: Annotated[str, typer.Option(help='JSON, e.g. {"window": 1024}')] = "{}",
    prompt_len: Annotated[
        int, typer.Option(help="Prompt tokens (decoders) or tokens per forward (encoders).")
    ] = 128,
    new_tokens: Annotated[int, typer.Option(help="Tokens generated greedily (decoders).")] = 32,
    batch: Annotated[int, typer.Option(help="Sequences per batch.")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
) -> None:
    """Run a transformers model with its stock attention and with a Variant: prefill, greedy
    decode, peak memory, KV cache bytes, and agreement with the stock run."""
    import json

    from sdpalab.report.console import render_model_bench
    from sdpalab.run.model_trial import bench_model
    from sdpalab.spec import Variant

    try:
        extra = {"mod_args": json.loads(mod_args), "kv_args": json.loads(kv_args)}
    except json.JSONDecodeError as err:
        raise BadInput(f"--mod-args/--kv-args must be JSON objects: {err}") from None
    variant = Variant(backend=backend, mod=mod, kv_cache=kv_cache, kv_quant=kv_quant, **extra)
    try:
        bench = bench_model(
            model,
            variant,
            prompt_len=prompt_len,
            new_tokens=new_tokens,
            batch=batch,
            device=device,
            dtype=dtype,
        )
    except ImportError as err:
        raise BadInput(str(err)) from None
    render_model_bench(console, bench)


def main() -> None:
    """Entry point: run the app with the project's exit-code contract."""
    try:
        # Without standalone mode click returns typer.Exit's code instead of exiting.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except (BadInput, ValueError, FileNotFoundError) as err:
        err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as done:
        sys.exit(getattr(done, "exit_code", getattr(done, "code", 0)) or 0)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except Exception as err:  # usage errors (bad flags) are bad input; anything else internal
        if isinstance(err, typer.TyperException) and hasattr(err, "format_message"):
            err_console.print(f"error: {err.format_message()}", markup=False, highlight=False)
            sys.exit(2)
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
