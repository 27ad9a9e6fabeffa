"""``sdpalab demo``: the ``demo`` preset swept on this machine, then its report.

Prefill over sequence lengths for every kernel the device has (with and without masks), and
decode against quantized caches; the preset adapts to the device (float32 on a CPU, bfloat16 on
a GPU). ``quick`` runs ``demo-quick``, the same grids at toy sizes.
"""

from __future__ import annotations

from pathlib import Path

from sdpalab.explore.grid import Results, sweep
from sdpalab.report.html import write_report
from sdpalab.run.rundir import default_out


def run_demo(out: str | Path | None = None, *, quick: bool = False, on_result=None) -> Results:
    """Sweep the demo preset into ``out`` (default ``runs/demo-<time>``) and write its report."""
    run = sweep("demo-quick" if quick else "demo", out or default_out("demo"), on_result=on_result)
    write_report(run.out)
    return run
