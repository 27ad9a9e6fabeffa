"""A worker process: ``python -m sdpalab.run.worker``. It imports torch once and then measures
trial after trial, so a trial that crashes the process (segfault, abort, a hang that must be
killed) takes only this worker down; the executor starts another.

Protocol, one JSON document per line. The parent writes trials to stdin::

    {"trial_id": "...", "variant": {...}, "workload": {...}, "settings": {...}}

and the worker answers on its original stdout (``{"event": "ready", "pid": N}`` once, then
``{"event": "result", "trial_id": "...", "result": {...}}`` per trial). Anything else that writes
to stdout (torch, a kernel, a print) is sent to stderr, so it can never corrupt the protocol.
Between trials the worker frees what the last one left behind (cached masks, CUDA blocks, the
peak counters), so one trial's leftovers never inflate the next one's peak.
"""

from __future__ import annotations

import ctypes
import faulthandler
import gc
import json
import os
import signal
import sys
import traceback
from typing import Any, TextIO

THREADS_ENV = "SDPALAB_WORKER_THREADS"


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies, so a killed sweep leaves no orphan running."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the closed stdin ends the worker after its current trial
    if os.getppid() == 1:  # the parent is already gone
        os._exit(1)


def _protocol_stream() -> TextIO:
    """The original stdout, kept for the protocol; fd 1 becomes a copy of stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return proto


def release_memory() -> None:
    """Drop what a finished trial may still hold: garbage, cached masks, CUDA cache and peaks."""
    import torch

    from sdpalab.attention.backends import clear_trial_caches

    clear_trial_caches()
    gc.collect()
    gc.freeze()  # survivors are long-lived (modules, caches): later collections skip them
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)


def run_one(message: dict[str, Any]) -> dict[str, Any]:
    """Measure one trial message; returns the Result as a dict (never raises)."""
    from sdpalab.measure.result import Result
    from sdpalab.run.trial import measure
    from sdpalab.spec import MeasureSettings, Variant, is_model_workload, workload_from_dict

    try:
        variant = Variant(**message["variant"])
        settings = MeasureSettings(**message["settings"])
        workload = workload_from_dict(message["workload"])
        if is_model_workload(message["workload"]):  # a whole model, end to end
            from sdpalab.run.model_trial import measure_model

            result = measure_model(variant, workload, settings)
        else:
            result = measure(variant, workload, settings)
    except Exception as err:  # measure() itself does not raise; building the specs might
        print(traceback.format_exc(), file=sys.stderr)
        result = Result(
            variant=message.get("variant", {}),
            workload=message.get("workload", {}),
            status="error",
            reason=f"{type(err).__name__}: {err}".splitlines()[0],
            settings=message.get("settings", {}),
        )
    result.trial_id = message.get("trial_id", result.trial_id)
    return result.to_dict()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent()
    proto = _protocol_stream()
    faulthandler.enable()  # a segfault leaves its Python stack in stderr, for the crash reason
    import torch

    if os.environ.get(THREADS_ENV):
        torch.set_num_threads(max(1, int(os.environ[THREADS_ENV])))
    import sdpalab.run.trial  # noqa: F401  (pay the imports before the first trial's clock)

    gc.collect()
    gc.freeze()
    proto.write(json.dumps({"event": "ready", "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        result = run_one(message)
        proto.write(
            json.dumps(
                {"event": "result", "trial_id": message.get("trial_id"), "result": result},
                default=str,
            )
            + "\n"
        )
        release_memory()
    proto.close()
    os._exit(0)  # skip interpreter teardown: frozen objects would only be reported as leaks


if __name__ == "__main__":
    main()
