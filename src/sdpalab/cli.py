"""The ``sdpalab`` command line. Thin: parse, call one library function, render.

Exit codes: 0 ok, 2 bad input (one line naming what is wrong and what is valid), 1 internal
error (one line; ``SDPALAB_DEBUG=1`` shows the traceback), 130 interrupted (one line: the
trials stored and the command that resumes).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sdpalab.cli_common import (
    AddressOption,
    BadInput,
    BusyNotice,
    ExecutorOption,
    StorageOption,
    console,
    err_console,
    make_executor,
    note_left_out,
    stop_cleanly,
)
from sdpalab.cli_explore import pareto, search, sensitivity

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find the attention configuration (kernel, mask, KV cache, quantization) that fits "
    "your workload, measured against a float64 oracle.",
)

_Force = Annotated[bool, typer.Option(help="Replace the run OUT already holds.")]


def _version(value: bool) -> None:
    if value:
        from sdpalab import __version__

        console.print(f"sdpalab {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Options of ``sdpalab`` itself (the app's help is set above)."""


MODEL_BACKENDS = (
    "Kernel: math, flash, efficient, cudnn, auto, flex, eager; on a GPU triton_qdecode (the "
    "fused quantized-KV decode kernel: a cache of it attends itself inside the model)"
)


@app.command()
def demo(
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/demo-<time>).")
    ] = None,
    quick: Annotated[bool, typer.Option(help="Smaller sizes (seconds, for tests).")] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue the demo run in OUT (the trials it has no row for).")
    ] = False,
    force: _Force = False,
) -> None:
    """Run a small preset on this machine: prefill and decode, every kernel it has."""
    from sdpalab.demo import NEXT_STEPS, run_demo
    from sdpalab.report.progress import progress_callback

    busy = BusyNotice()
    with stop_cleanly(), progress_callback(console) as on_result:
        run = run_demo(
            out, quick=quick, resume=resume, force=force, on_result=on_result, on_start=busy.start
        )
    from sdpalab.report.console import render_run

    render_run(console, run)
    for line in NEXT_STEPS:
        console.print(line, markup=False, highlight=False)
    busy.end(run.results)


@app.command()
def doctor(
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    remeasure: Annotated[bool, typer.Option(help="Measure the ceilings again.")] = False,
) -> None:
    """What this machine can run, and its measured ceilings (matmul rate, copy bandwidth)."""
    from sdpalab.doctor import doctor_report
    from sdpalab.report.console import render_doctor

    report = doctor_report(device, remeasure=remeasure)
    render_doctor(console, report)


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
    storage: StorageOption = None,
    study: Annotated[
        str | None,
        typer.Option(help="With --storage: the shared study whose results DIR's report shows."),
    ] = None,
) -> None:
    """Write DIR/report.html and DIR/plots, print the tables; compare with another run. With
    --storage URL --study NAME: the report of a shared study, written into DIR."""
    from sdpalab.report.compare import parse_threshold, slower_than
    from sdpalab.report.console import render_comparison, render_paths, render_results
    from sdpalab.report.html import make_report

    threshold = None if fail_if_slower is None else parse_threshold(fail_if_slower)
    if threshold is not None and compare is None:
        raise BadInput("--fail-if-slower needs --compare OTHER_DIR (the baseline run)")
    shared = None
    if storage is not None or study is not None:
        from sdpalab.explore.search import study_results

        if storage is None or study is None:
            raise BadInput("a shared study needs both --storage URL and --study NAME")
        shared, _ = study_results(storage, study)
        run_dir.mkdir(parents=True, exist_ok=True)
    results, comparisons, _ = make_report(run_dir, compare, results=shared)
    render_results(console, results, title=str(run_dir))
    if comparisons is not None:
        render_comparison(console, comparisons)
        busy = sum(c.verdict == "busy" for c in comparisons)
        if busy:
            console.print(
                f"not comparable: {busy} trial(s) measured on a busy machine in one run or the "
                "other; rerun them on an idle machine before reading their ratios",
                markup=False,
                highlight=False,
            )
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
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue the run in OUT: only the trials it has no row for. Refused for a "
            "config that does not hold every stored trial."
        ),
    ] = False,
    force: _Force = False,
    workers: Annotated[int, typer.Option(help="Worker processes running trials at once.")] = 1,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the trials (labels by shapes) and an estimate of the time; run and "
            "write nothing.",
        ),
    ] = False,
) -> None:
    """Run every trial of a config's grid; failures are recorded, never fatal. OUT must not
    hold a run unless --resume or --force; Ctrl-C keeps what is stored and says how to resume."""
    from sdpalab.explore.grid import sweep as run_sweep
    from sdpalab.report.console import render_run
    from sdpalab.report.progress import progress_callback
    from sdpalab.run.executor import use_executor
    from sdpalab.spec.config import load_spec

    if workers < 1:
        raise BadInput(f"--workers {workers} is not valid; give 1 or more")
    engine = make_executor(executor, address)
    spec = load_spec(config)
    if dry_run:
        from sdpalab.explore.estimate import estimate_sweep
        from sdpalab.report.console import render_dry_run

        render_dry_run(console, estimate_sweep(spec, workers=workers))
        return
    busy = BusyNotice()

    def started(load: dict) -> None:  # the directory is ready; nothing has run
        busy.start(load)
        note_left_out(spec)

    with use_executor(engine, spec.device), stop_cleanly(), progress_callback(console) as on_result:
        run = run_sweep(
            spec,
            out,
            resume=resume,
            force=force,
            workers=workers,
            on_result=on_result,
            on_start=started,
        )
    from sdpalab.report.html import write_report

    write_report(run.out, results=run.results)
    render_run(console, run)
    busy.end(run.results)


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
        list[str] | None,
        typer.Option(help="Only these quantizations or per-layer maps, e.g. int8@0-1,kivi2."),
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
    force: _Force = False,
) -> None:
    """The SDPA optimization case study's three experiments as [B, H, S, D], its published
    figures beside ours, and what it measured wrongly, each shown by a measurement."""
    from rich.table import Table
    from rich.text import Text

    from sdpalab.casestudy import run_case_study

    def progress(row) -> None:
        console.print(row.result.summary(), markup=False, soft_wrap=True)

    busy = BusyNotice()
    run = run_case_study(
        out, quick=quick, device=device, force=force, on_result=progress, on_start=busy.start
    )
    wide = Console(width=max(console.width, 200))  # eleven columns; print(width=) can't widen
    for table in run.tables:
        shown = Table(*table.columns, title=table.title, show_lines=True)
        for row in table.rows:
            shown.add_row(*map(Text, row))  # cells hold "[B, H, S, D]": text, not markup
        wide.print(shown)
    console.print("written:")
    for path in run.paths.values():
        console.print(f"  {path}", markup=False, soft_wrap=True)  # a path is never broken
    busy.end(r.result for r in run.rows)


@app.command("model")
def model_(
    model: Annotated[
        str,
        typer.Argument(
            help="smollm2, minilm, tiny-llama, or a local model dir / config.json / .gguf"
        ),
    ],
    backend: Annotated[str, typer.Option(help=MODEL_BACKENDS)] = "auto",
    mod: Annotated[
        str, typer.Option(help="Mod (none: the model's own causal or full mask)")
    ] = "none",
    mod_args: Annotated[str, typer.Option(help='JSON, e.g. {"window": 256}')] = "{}",
    kv_cache: Annotated[str, typer.Option(help="none, dynamic, static, sliding or paged")] = "none",
    kv_quant: Annotated[
        str, typer.Option(help="none, int8, int4, fp8, kivi2, kivi4 or a map: int8@0-1,kivi2")
    ] = "none",
    kv_args: Annotated[str, typer.Option(help='JSON, e.g. {"window": 1024}')] = "{}",
    prompt_len: Annotated[
        int, typer.Option(help="Prompt tokens (decoders) or tokens per forward (encoders).")
    ] = 128,
    new_tokens: Annotated[int, typer.Option(help="Tokens generated greedily (decoders).")] = 32,
    batch: Annotated[int, typer.Option(help="Sequences per batch.")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
    text: Annotated[
        Path | None,
        typer.Option(
            help="UTF-8 text file the decoders' prompts are windows of (default: Python's "
            "pydoc_data.topics; a model without a tokenizer gets random tokens)."
        ),
    ] = None,
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
            text=text,
        )
    except ImportError as err:
        raise BadInput(str(err)) from None
    render_model_bench(console, bench)


def _layer_list(text: str) -> list[int]:
    """``0,5,29`` → ``[0, 5, 29]``."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise BadInput(
            f"--layers {text!r} is not a list of layer numbers; use e.g. 0,5,29"
        ) from None


@app.command("capture")
def capture_(
    model: Annotated[
        str, typer.Argument(help="smollm2, tiny-llama, or a local model dir / config.json / .gguf")
    ],
    out: Annotated[Path, typer.Option(help="Trace file to write (safetensors).")],
    layers: Annotated[
        str | None, typer.Option(help="Layers to record, e.g. 0,5,29 (default: first, mid, last).")
    ] = None,
    tokens: Annotated[int, typer.Option(help="Tokens of the text the model runs on.")] = 1024,
    text: Annotated[
        Path | None, typer.Option(help="UTF-8 text file (default: Python's pydoc_data.topics).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
    force: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
    compare: Annotated[
        bool,
        typer.Option(
            help="Then measure every KV format on the captured tensors and on Gaussian ones "
            "of the same shapes, and print the two errors side by side."
        ),
    ] = False,
) -> None:
    """Record a model's post-RoPE queries, keys and values (and each layer's own attention
    output) on a text into one file; a sweep measures on it with workload: {trace: FILE}."""
    from rich.table import Table

    from sdpalab.models.capture import capture

    try:
        done = capture(
            model,
            out,
            layers=None if layers is None else _layer_list(layers),
            tokens=tokens,
            text=text,
            device=device,
            dtype=dtype,
            force=force,
        )
    except ImportError as err:
        raise BadInput(str(err)) from None
    meta = done.meta
    source = meta["text"]
    console.print(
        f"wrote {done.path}: {meta['model']}, {meta['tokens']} tokens of {source['source']} "
        f"(sha256 {source['sha256']}, {source['tokenizer']}), {meta['dtype']}",
        markup=False,
        soft_wrap=True,
    )
    for layer in done.layers:
        mask = meta["masks"][str(layer)]
        args = ",".join(f"{k}={v}" for k, v in mask["args"].items())
        console.print(
            f"  layer {layer}: {mask['mod']}{f'({args})' if args else ''}; float64 oracle of its "
            f"q, k, v vs its own output: rel err {meta['check'][str(layer)]:.1e}",
            markup=False,
            soft_wrap=True,
        )
    listed = ", ".join(map(str, done.layers))
    console.print(
        f"sweep on it: workload: {{trace: {done.path}, layers: [{listed}]}}", markup=False
    )
    if not compare:
        return
    from sdpalab.run.trace_compare import compare_to_gaussian

    table = Table(
        "layer",
        "variant",
        "Gaussian",
        "real",
        "real/Gaussian",
        title=f"relative error against the float64 oracle (prefill, {dtype}, {meta['device']})",
    )
    table.columns[1].no_wrap = True
    for row in compare_to_gaussian(done.path, dtype=dtype, device=meta["device"]):
        cells = [
            f"{r.rel_fro_err:.2e}" if r.ok and r.rel_fro_err is not None else r.status
            for r in (row.gaussian, row.real)
        ]
        ratio = "-"
        if row.real.ok and row.gaussian.ok and row.gaussian.rel_fro_err:
            ratio = f"{row.real.rel_fro_err / row.gaussian.rel_fro_err:.2f}"
        table.add_row(str(row.layer), row.label, *cells, ratio)
    console.print(table)


QUALITY_FORMATS = "none,int8,int4,kivi4"


@app.command()
def quality(
    model: Annotated[
        str,
        typer.Argument(help="smollm2, a .gguf file, or a local checkpoint dir with a tokenizer"),
    ] = "smollm2",
    kv_quant: Annotated[
        list[str] | None,
        typer.Option(
            help="Formats, comma-separated (none, int8, int4, fp8, kivi2, kivi4; default "
            f"{QUALITY_FORMATS}), or one per-layer map such as int8@0-1,kivi2 (repeatable)."
        ),
    ] = None,
    kv_cache: Annotated[str, typer.Option(help="dynamic, static, sliding or paged")] = "static",
    kv_args: Annotated[str, typer.Option(help='JSON, e.g. {"residual": 64}')] = "{}",
    backend: Annotated[str, typer.Option(help=MODEL_BACKENDS)] = "auto",
    context: Annotated[int, typer.Option(help="Tokens prefilled into the cache per window.")] = 512,
    eval_tokens: Annotated[
        int, typer.Option(help="Tokens scored per window, teacher-forced through the cache.")
    ] = 128,
    windows: Annotated[int, typer.Option(help="Windows of the text, spread over it.")] = 4,
    chunk: Annotated[
        int, typer.Option(help="Tokens fed per forward after the prefill (1: decode steps).")
    ] = 1,
    text: Annotated[
        Path | None, typer.Option(help="UTF-8 text file (default: Python's pydoc_data.topics).")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON document instead of the table.")
    ] = False,
) -> None:
    """Perplexity change, KL and top-1 agreement of each KV cache format against the model's
    unquantized cache, teacher-forced on real text (float32, CPU)."""
    import json

    from sdpalab.report.console import render_quality
    from sdpalab.report.progress import step_progress
    from sdpalab.run.quality import measure_quality
    from sdpalab.spec import Variant

    try:
        args = json.loads(kv_args)
    except json.JSONDecodeError as err:
        raise BadInput(f"--kv-args must be a JSON object: {err}") from None
    formats = [
        fmt
        for value in kv_quant or [QUALITY_FORMATS]
        # a per-layer map is itself comma-separated: a value with an @ is one map
        for fmt in ([value] if "@" in value else value.split(","))
        if fmt.strip()
    ]
    if not formats:
        raise BadInput("--kv-quant is empty; give e.g. none,int8,int4,kivi4")
    variants = [
        Variant(backend=backend, kv_cache=kv_cache, kv_quant=f.strip(), kv_args=args)
        for f in formats
    ]
    try:
        with step_progress(err_console, "quality") as on_progress:
            report = measure_quality(
                model,
                variants,
                text=text,
                context=context,
                eval_tokens=eval_tokens,
                windows=windows,
                chunk=chunk,
                on_progress=on_progress,
            )
    except ImportError as err:
        raise BadInput(str(err)) from None
    if json_out:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        render_quality(console, report)


def main() -> None:
    """Entry point: run the app with the project's exit-code contract."""
    try:
        # Without standalone mode click returns typer.Exit's code instead of exiting; a
        # KeyboardInterrupt inside a command comes back as 130.
        code = app(standalone_mode=False)
        if code == 130:
            err_console.print("interrupted", markup=False, highlight=False)
        sys.exit(code if isinstance(code, int) else 0)
    except (BadInput, ValueError, FileNotFoundError) as err:
        err_console.print(
            f"error: {_redact(str(err))}", markup=False, highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except (typer.Exit, SystemExit) as done:
        sys.exit(getattr(done, "exit_code", getattr(done, "code", 0)) or 0)
    except (KeyboardInterrupt, typer.Abort):  # outside a command (runs: stop_cleanly)
        err_console.print("interrupted", markup=False, highlight=False)
        sys.exit(130)
    except Exception as err:  # usage errors (bad flags) are bad input; anything else internal
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `sdpalab`: typer printed the help
            sys.exit(0)  # (typer vendors click: the class is matched by name)
        if isinstance(err, typer.TyperException) and hasattr(err, "format_message"):
            err_console.print(f"error: {err.format_message()}", markup=False, highlight=False)
            sys.exit(2)
        if os.environ.get("SDPALAB_DEBUG"):
            raise
        err_console.print(
            f"internal error: {type(err).__name__}: {_redact(str(err))} (set SDPALAB_DEBUG=1 for "
            "the traceback)",
            markup=False,
            highlight=False,
        )
        sys.exit(1)


def _redact(text: str) -> str:
    """An error's text with any storage password masked."""
    from sdpalab.run.rundir import redact_secrets

    return redact_secrets(text)


if __name__ == "__main__":
    main()
