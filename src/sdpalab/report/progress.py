"""Live progress: a sweep's done / total, failures by kind, elapsed and ETA
(:func:`progress_callback`), or the steps of one long run (:func:`step_progress`).

On a terminal this is a rich progress bar; elsewhere (CI logs, pipes) a plain line every
``LOG_EVERY_S`` seconds. A sweep prints one summary line at the end. Light on purpose: this
module imports only rich.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LOG_EVERY_S = 30.0


def _failures(counts: Counter) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()) if status != "ok")


def summary_line(counts: Counter, elapsed_s: float) -> str:
    """``40 trials in 12.3 s: 35 ok; failed: 1 crash, 1 error, 1 numerical_fail, ...``."""
    total = sum(counts.values())
    failed = _failures(counts)
    text = f"{total} trials in {elapsed_s:.1f} s: {counts.get('ok', 0)} ok"
    return text + (f"; failed: {failed}" if failed else "")


@contextmanager
def progress_callback(
    console: Console, total: int | None = None
) -> Iterator[Callable[[Any, int, int], None]]:
    """Yield ``on_result(result, done, total)`` that advances a progress display on ``console``.

    ``total`` may be left out: the first call's ``total`` sets it. A result is anything with a
    ``status`` attribute.
    """
    counts: Counter = Counter()
    started = time.monotonic()
    live = console.is_terminal
    progress = Progress(
        TextColumn("[bold]sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[fail]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not live,
    )
    task = progress.add_task("sweep", total=total, fail="")
    last_log = started

    def on_result(result: Any, done: int, total_now: int) -> None:
        nonlocal last_log
        counts[getattr(result, "status", "ok")] += 1
        failed = _failures(counts)
        progress.update(
            task, completed=done, total=total_now, fail=f"[red]{failed}[/red]" if failed else ""
        )
        now = time.monotonic()
        if not live and (now - last_log >= LOG_EVERY_S):
            last_log = now
            console.print(
                f"{done}/{total_now} trials, {now - started:.0f} s"
                + (f"; failed: {failed}" if failed else ""),
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    with progress:
        yield on_result
    if counts:
        console.print(
            summary_line(counts, time.monotonic() - started),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


@contextmanager
def step_progress(console: Console, label: str) -> Iterator[Callable[[int, int], None]]:
    """Yield ``update(done, total)`` for a long run of steps: a rich bar with its ETA on a
    terminal, else a plain ``label: done/total, elapsed, ETA`` line every ``LOG_EVERY_S``."""
    started = time.monotonic()
    live = console.is_terminal
    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not live,
    )
    task = progress.add_task(label, total=None)
    last_log = started

    def update(done: int, total: int) -> None:
        nonlocal last_log
        progress.update(task, completed=done, total=total)
        now = time.monotonic()
        if not live and now - last_log >= LOG_EVERY_S:
            last_log = now
            elapsed = now - started
            eta = elapsed * (total - done) / done if done else float("nan")
            console.print(
                f"{label}: {done}/{total}, {elapsed:.0f} s, ETA {eta:.0f} s",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    with progress:
        yield update
