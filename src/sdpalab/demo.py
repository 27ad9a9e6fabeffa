"""``sdpalab demo``: the ``demo`` preset swept on this machine, then its report.

Prefill over sequence lengths for every kernel the device has (with and without masks), and
decode against quantized caches; the preset adapts to the device (float32 on a CPU, bfloat16 on
a GPU). ``quick`` runs ``demo-quick``, the same grids at toy sizes. The demo measures
inference; :data:`NEXT_STEPS` points on, to training (``train-masks``) among others.
"""

from __future__ import annotations

from pathlib import Path

from sdpalab.explore.grid import Results, sweep
from sdpalab.report.html import write_report
from sdpalab.run.rundir import default_out

NEXT_STEPS = (
    "next: sdpalab sweep train-masks  (training: forward and backward of causal, "
    "sliding-window and document masks, dq/dk/dv checked against float64)",
    "      sdpalab sweep prefill-masks  (every mask and bias, forward only)",
)
"""What to run after the demo, for people: one line each."""


def run_demo(
    out: str | Path | None = None,
    *,
    quick: bool = False,
    resume: bool = False,
    force: bool = False,
    on_result=None,
    on_start=None,
) -> Results:
    """Sweep the demo preset into ``out`` (default ``runs/demo-<time>``) and write its report.
    ``resume``, ``force``, ``on_result`` and ``on_start`` as for
    :func:`~sdpalab.explore.grid.sweep`."""
    run = sweep(
        "demo-quick" if quick else "demo",
        out or default_out("demo"),
        resume=resume,
        force=force,
        on_result=on_result,
        on_start=on_start,
    )
    write_report(run.out)
    return run
