"""What every CLI module shares: the consoles, the bad-input exception (exit code 2), the
busy-machine warning, the command that resumes an interrupted run, and the executor options
(``--executor``, ``--address``) and study options (``--storage``, ``--study``)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # one-line errors stay one line


class BadInput(Exception):
    """Raised by commands for user errors; becomes exit code 2 with one line."""


EXECUTORS = ("local", "ray")
ExecutorOption = Annotated[
    str,
    typer.Option(
        help="Where trials run: local (worker processes here; with N GPUs and --workers N, one "
        "worker pinned to each) or ray (Ray actors, one GPU or a CPU share each)."
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        help="--executor ray: the cluster, HOST:PORT (`ray start --head` prints it), "
        "ray://HOST:PORT or auto; default: a Ray instance on this host for the run."
    ),
]
StorageOption = Annotated[
    str | None,
    typer.Option(
        help="Optuna RDB URL of a study shared by several search processes, e.g. "
        "postgresql://USER@HOST/DB (password from the URL, PGPASSWORD or ~/.pgpass; never "
        "recorded). Default: OUT/optuna.log."
    ),
]
StudyOption = Annotated[
    str | None, typer.Option(help="Name of the study in --storage (default: the config's name).")
]


def make_executor(executor: str, address: str | None) -> Any:
    """The executor ``--executor``/``--address`` name (BadInput when they make none)."""
    if executor not in EXECUTORS:
        raise BadInput(
            f"--executor {executor!r} is not valid; choose one of: {', '.join(EXECUTORS)}"
        )
    if executor == "local":
        if address is not None:
            raise BadInput("--address needs --executor ray")
        from sdpalab.run.executor import LocalExecutor

        return LocalExecutor()
    from sdpalab.run.ray_executor import RayExecutor, import_ray

    try:
        import_ray()
    except ImportError as err:
        raise BadInput(str(err)) from None
    return RayExecutor(address=address)


def warn(text: str) -> None:
    """One line on stderr, never wrapped or marked up."""
    err_console.print(f"warning: {text}", markup=False, highlight=False, soft_wrap=True)


class BusyNotice:
    """Says once that latencies were measured on a busy machine: at the top when the machine is
    busy as the run starts (``start``, a run's ``on_start``), else at the end if some results
    were measured busy (``end``)."""

    def __init__(self) -> None:
        self.warned = False

    def start(self, load: dict[str, Any]) -> None:
        from sdpalab.measure.provenance import load_text

        if load.get("busy") and not self.warned:
            self.warned = True
            warn(
                f"this machine is busy ({load_text(load)}): latencies measured now say "
                "little; results measured busy are flagged so (provenance, run.json) and "
                "`report --compare` will not call them different"
            )

    def end(self, results: Iterable[Any]) -> None:
        results = list(results)
        busy = sum(bool((getattr(r, "provenance", None) or {}).get("busy")) for r in results)
        if busy and not self.warned:
            self.warned = True
            warn(
                f"{busy} of {len(results)} trials were measured while other work kept this "
                "machine busy (flagged busy in their provenance); their latencies say little"
            )


def note_left_out(spec: Any) -> None:
    """One line on the grid's points that could run nowhere (left out, not trials)."""
    left = spec.left_out()
    if left:
        console.print(
            f"note: {len(left)} point(s) of the grid can run nowhere and are left out, e.g. "
            f"{left[0].label}: {left[0].invalid}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def resume_command(argv: list[str], out: Path) -> str:
    """The command line that continues an interrupted run: ``argv`` with ``--out OUT`` (when it
    was the default) and ``--resume`` in place of ``--force``."""
    from sdpalab.run.rundir import redact_secrets

    args = [redact_secrets(a) for a in argv[1:] if a != "--force"]
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", str(out)]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["sdpalab", *args])


@contextmanager
def stop_cleanly() -> Iterator[None]:
    """Around a run: Ctrl-C prints the trials stored and the command that resumes, one line,
    and exits 130. (typer turns a KeyboardInterrupt into a silent exit 130; a SystemExit
    passes through it.)"""
    from sdpalab.run.rundir import Interrupted

    try:
        yield
    except Interrupted as stop:
        err_console.print(
            f"interrupted: {stop.stored} of {stop.total} trials stored in {stop.out}; resume "
            f"with: {resume_command(sys.argv, stop.out)}",
            markup=False,
            highlight=False,
        )
        raise SystemExit(130) from None
