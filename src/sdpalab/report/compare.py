"""Compare two runs trial by trial, the way asv and pytest-benchmark compare runs.

Trials are matched by configuration: the variant and the workload (every ``v_*`` and ``wl_*``
field), not by ``trial_id``, which also hashes the measurement settings and so changes when
only the repeat count does. For each match the ratios new / base of latency, peak memory and
relative error, and a verdict: ``faster`` or ``slower`` when the latency difference exceeds
the two runs' IQRs added together, ``same`` inside that noise, and ``busy`` (not comparable)
when either side was measured on a busy machine (its provenance says ``busy``): a latency
taken while other work held the CPUs or the GPU says nothing about the kernel. Trials that
failed on either side, or exist on one side only, get a verdict saying so.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sdpalab.measure.result import Result
from sdpalab.report.tables import SHAPE, row_label, shape_of, trial_rows
from sdpalab.run.rundir import decode_json

VERDICTS = ("faster", "slower", "same", "busy", "broken", "fixed", "failed", "added", "removed")
VERDICT_STYLE = {
    "faster": "bold green",
    "slower": "bold red",
    "same": "dim",
    "busy": "yellow",
    "broken": "red",
    "fixed": "green",
    "failed": "dim red",
    "added": "cyan",
    "removed": "yellow",
}


@dataclass(frozen=True)
class Comparison:
    """One configuration in both runs (or in one of them). Ratios are new / base."""

    key: str
    """JSON of the variant and workload fields: the identity trials are matched by."""
    label: str
    shape: str
    verdict: str
    """``faster``, ``slower``, ``same`` (inside the combined IQRs), ``busy`` (either side
    measured on a busy machine: not comparable), ``broken`` (ok → failed), ``fixed`` (failed →
    ok), ``failed`` (both failed), ``added`` (new only), ``removed``."""
    base_status: str | None = None
    new_status: str | None = None
    base_latency_ms: float | None = None
    new_latency_ms: float | None = None
    noise_ms: float | None = None
    """Combined IQR of the two latencies: differences smaller than this are noise."""
    latency_ratio: float | None = None
    mem_ratio: float | None = None
    """Ratio of ``peak_mem_bytes``."""
    err_ratio: float | None = None
    """Ratio of ``rel_fro_err``."""
    base_trial_id: str | None = None
    new_trial_id: str | None = None

    @property
    def slowdown(self) -> float | None:
        """``latency_ratio - 1`` (0.10 = 10 % slower), or None without both latencies."""
        return None if self.latency_ratio is None else self.latency_ratio - 1.0


def _canonical(value: Any) -> Any:
    value = decode_json(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, str) and value in ("True", "False"):  # CSV round trip of bools
        return value == "True"
    return value


def config_key(row: dict[str, Any]) -> str:
    """Identity of a trial's configuration: its variant and workload fields (not the settings,
    not the trial id), canonicalized so a row from the store and one from a CSV agree."""
    ident = {
        k: _canonical(v)
        for k, v in row.items()
        if (k.startswith("v_") or k.startswith("wl_")) and v is not None
    }
    return json.dumps(ident, sort_keys=True, default=str)


def _ratio(new: Any, base: Any) -> float | None:
    if new is None or base is None:
        return None
    try:
        return float(new) / float(base) if float(base) != 0 else None
    except (TypeError, ValueError):
        return None


def _shape_text(row: dict[str, Any]) -> str:
    shape = shape_of(row)
    dims = " ".join(f"{k}={shape[k]}" for _, k in SHAPE if shape.get(k) is not None)
    return f"{row.get('wl_phase', '')} {row.get('wl_dtype', '')} {dims}".strip()


def _busy_keys(results) -> set[str]:
    """Configurations measured on a busy machine: Results say so in their provenance (flat
    rows, from a CSV, carry no provenance and count as not busy)."""
    if not isinstance(results, list | tuple):
        return set()
    return {
        config_key(r.to_row())
        for r in results
        if isinstance(r, Result) and (r.provenance or {}).get("busy")
    }


def _verdict(base: dict[str, Any], new: dict[str, Any], busy: bool) -> tuple[str, float | None]:
    base_ok, new_ok = base.get("status", "ok") == "ok", new.get("status", "ok") == "ok"
    if not base_ok or not new_ok:
        return ("broken" if base_ok else "fixed" if new_ok else "failed"), None
    b, n = base.get("latency_ms"), new.get("latency_ms")
    if b is None or n is None:
        return "same", None
    noise = float(base.get("latency_iqr_ms") or 0.0) + float(new.get("latency_iqr_ms") or 0.0)
    if busy:
        return "busy", noise
    if abs(n - b) <= noise:
        return "same", noise
    return ("slower" if n > b else "faster"), noise


def compare_runs(base_results, new_results) -> list[Comparison]:
    """Match the trials of two runs by configuration and compare them.

    ``base_results``, ``new_results``: lists of Result or flat DataFrames (``rundir.load``).
    Returns one Comparison per configuration present in either run: matched ones in the new
    run's order, then those only in the base run. When a run holds a configuration twice, its
    last trial counts.
    """
    base = {config_key(r): r for r in trial_rows(base_results)}
    new = {config_key(r): r for r in trial_rows(new_results)}
    busy = _busy_keys(base_results) | _busy_keys(new_results)
    out = []
    for key, n in new.items():
        b = base.get(key)
        if b is None:
            out.append(
                Comparison(
                    key=key,
                    label=row_label(n),
                    shape=_shape_text(n),
                    verdict="added",
                    new_status=n.get("status"),
                    new_latency_ms=n.get("latency_ms"),
                    new_trial_id=n.get("trial_id"),
                )
            )
            continue
        verdict, noise = _verdict(b, n, key in busy)
        out.append(
            Comparison(
                key=key,
                label=row_label(n),
                shape=_shape_text(n),
                verdict=verdict,
                base_status=b.get("status"),
                new_status=n.get("status"),
                base_latency_ms=b.get("latency_ms"),
                new_latency_ms=n.get("latency_ms"),
                noise_ms=noise,
                latency_ratio=_ratio(n.get("latency_ms"), b.get("latency_ms")),
                mem_ratio=_ratio(n.get("peak_mem_bytes"), b.get("peak_mem_bytes")),
                err_ratio=_ratio(n.get("rel_fro_err"), b.get("rel_fro_err")),
                base_trial_id=b.get("trial_id"),
                new_trial_id=n.get("trial_id"),
            )
        )
    for key, b in base.items():
        if key not in new:
            out.append(
                Comparison(
                    key=key,
                    label=row_label(b),
                    shape=_shape_text(b),
                    verdict="removed",
                    base_status=b.get("status"),
                    base_latency_ms=b.get("latency_ms"),
                    base_trial_id=b.get("trial_id"),
                )
            )
    return out


def parse_threshold(text: str) -> float:
    """``"10%"`` → 0.10. Raises ValueError naming the expected form."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", str(text))
    if not match:
        raise ValueError(f"--fail-if-slower {text!r} is not valid; give a percentage such as 10%")
    return float(match.group(1)) / 100.0


def slower_than(comparisons: list[Comparison], threshold: float) -> list[Comparison]:
    """Matched trials slower by more than ``threshold`` (0.10 = 10 %) and outside the noise."""
    return [
        c
        for c in comparisons
        if c.verdict == "slower" and c.slowdown is not None and c.slowdown > threshold
    ]


def summary_counts(comparisons: list[Comparison]) -> dict[str, int]:
    """Comparisons per verdict, in :data:`VERDICTS` order."""
    counts = {v: 0 for v in VERDICTS}
    for c in comparisons:
        counts[c.verdict] = counts.get(c.verdict, 0) + 1
    return {v: n for v, n in counts.items() if n}
