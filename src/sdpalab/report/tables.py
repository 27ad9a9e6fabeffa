"""Summary tables grouped the way ``torch.utils.benchmark.Compare`` groups them.

One table per (phase, dtype, device, trace file, and whatever other shape stays fixed); rows are
variants (their labels), columns are the shapes that vary (``B=1 S=1024``, a trace's ``L=5``). Each cell holds the latency,
the peak memory above the inputs and the status. The console and the HTML report both render
these :class:`Table` objects, so they always show the same numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sdpalab.run.rundir import decode_json, frame, records
from sdpalab.spec.variant import mod_text

SHAPE = (
    ("batch", "B"),
    ("heads_q", "Hq"),
    ("heads_kv", "Hkv"),
    ("seq_kv", "S"),
    ("seq_q", "Sq"),
    ("head_dim", "D"),
    ("layer", "L"),  # a trace's layers share their shapes
)
GROUP = ("phase", "dtype", "device", "trace", "mod", "mod_args")
"""One table per value of these; ``trace`` (the file) sets real tensors apart from Gaussian,
``mod`` the attention a workload means (when it names one) from another."""


@dataclass
class Cell:
    status: str
    latency_ms: float | None = None
    latency_iqr_ms: float | None = None
    peak_mem_bytes: int | None = None
    rel_fro_err: float | None = None
    noisy: bool = False
    reason: str = ""
    best: bool = False
    eager: bool = False  # timed as an eager call on a GPU where others were graph replays
    latency_fwd_ms: float | None = None  # phase train: the forward's part of latency_ms
    latency_bwd_ms: float | None = None  # and the backward's


@dataclass
class Table:
    title: str
    columns: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)


EAGER_MARK = "e"
EAGER_NOTE = (
    "e = timed as an eager call, host launch included; the others as CUDA-graph replays "
    "(flex and dynamic caches, or a call that could not be captured)"
)


def eager_among_graphs(methods: Iterable[str | None]) -> set[int]:
    """Positions of the GPU timings taken as eager calls, when others were graph replays (a
    latency a serving loop would not see: it includes Python's launch cost). Empty when the
    timings are all of one kind."""
    methods = list(methods)
    if not any(m == "cuda_graph" for m in methods):
        return set()
    return {i for i, m in enumerate(methods) if m and m.startswith("cuda_events")}


def format_ms(ms: float | None) -> str:
    """Milliseconds with about three significant digits: ``0.123``, ``12.3``, ``1234``."""
    if ms is None:
        return "-"
    for limit, digits in ((100, 0), (10, 1), (1, 2)):
        if abs(ms) >= limit:
            return f"{ms:.{digits}f}"
    return f"{ms:.3f}"


def row_label(row: dict[str, Any]) -> str:
    """The variant's label, or one made from its ``v_*`` fields when a row has none."""
    if row.get("label"):
        return str(row["label"])
    parts = [str(row.get("v_backend", "?"))]
    if row.get("v_mod") not in (None, "none"):
        parts.append(str(row["v_mod"]))
    if row.get("v_kv_cache") not in (None, "none"):
        parts.append(str(row["v_kv_cache"]))
    return "/".join(parts)


def trial_rows(results) -> list[dict[str, Any]]:
    """Results (list or flat DataFrame) as row dicts of plain values, with labels made unique:
    variants that share a label (it leaves out ``kv_args``, say) get the fields that tell them
    apart appended, e.g. ``auto/paged [kv_args={"page_size": 64}]``."""
    rows = records(frame(results)) if results is not None else []
    identities: dict[str, dict[str, dict]] = {}
    for row in rows:
        variant = {k: row.get(k) for k in row if k.startswith("v_")}
        identities.setdefault(row_label(row), {})[json.dumps(variant, default=str)] = variant
    for row in rows:
        label = row_label(row)
        variants = list(identities[label].values())
        if len(variants) > 1:
            differ = [k for k in variants[0] if len({json.dumps(v.get(k)) for v in variants}) > 1]
            extra = ", ".join(f"{k[2:]}={row.get(k)}" for k in differ)
            row["label"] = f"{label} [{extra}]"
        else:
            row["label"] = label
    return rows


def shape_of(row: dict[str, Any]) -> dict[str, Any]:
    """Short shape fields of a row (``Sq`` only where it differs from ``S``)."""
    shape = {short: row.get(f"wl_{name}") for name, short in SHAPE}
    if shape["Sq"] == shape["S"]:
        shape["Sq"] = None
    return shape


def _describe(shape: dict[str, Any], keys) -> str:
    return " ".join(f"{k}={shape[k]}" for k in keys if shape.get(k) is not None)


def _sort_key(value: Any) -> tuple:
    return (value is None, value if isinstance(value, int | float) else str(value))


def group_tables(results) -> list[Table]:
    """Results (list or flat DataFrame) → summary tables, one per fixed (phase, dtype, device)."""
    rows = trial_rows(results)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(f"wl_{g}") for g in GROUP), []).append(row)
    tables = []
    for key, members in groups.items():
        shapes = [shape_of(r) for r in members]
        names = [short for _, short in SHAPE]
        varying = [k for k in names if len({json.dumps(s[k]) for s in shapes}) > 1]
        fixed = [k for k in names if k not in varying]
        columns_from = varying or fixed
        meant = dict(zip(GROUP, key, strict=True))
        title_parts = [
            str(v) for g, v in meant.items() if v is not None and g not in ("mod", "mod_args")
        ]
        if meant["mod"] is not None:  # the mask the workload names, with its arguments
            title_parts.append("means " + mod_text(meant["mod"], decode_json(meant["mod_args"])))
        fixed_text = _describe(shapes[0], fixed) if varying else ""
        table = Table(title=" · ".join([*title_parts, fixed_text] if fixed_text else title_parts))
        order = sorted(
            {tuple(s[k] for k in columns_from) for s in shapes},
            key=lambda t: tuple(_sort_key(v) for v in t),
        )
        table.columns = [
            _describe(dict(zip(columns_from, t, strict=True)), columns_from) or "-" for t in order
        ]
        methods: dict[tuple[str, str], str | None] = {}
        for row, shape in zip(members, shapes, strict=True):
            label = row_label(row)
            if label not in table.rows:
                table.rows.append(label)
            column = _describe(shape, columns_from) or "-"
            table.cells[(label, column)] = Cell(
                status=str(row.get("status") or "ok"),
                latency_ms=row.get("latency_ms"),
                latency_iqr_ms=row.get("latency_iqr_ms"),
                peak_mem_bytes=row.get("peak_mem_bytes"),
                rel_fro_err=row.get("rel_fro_err"),
                noisy=bool(row.get("noisy")),
                reason=str(row.get("reason") or ""),
                latency_fwd_ms=row.get("latency_fwd_ms"),
                latency_bwd_ms=row.get("latency_bwd_ms"),
            )
            methods[(label, column)] = row.get("timing_method")
        keys = list(methods)
        for i in eager_among_graphs(methods.values()):
            table.cells[keys[i]].eager = True
        for column in table.columns:
            ok = [
                c
                for (r, col), c in table.cells.items()
                if col == column and c.status == "ok" and c.latency_ms is not None
            ]
            if len(ok) > 1:
                min(ok, key=lambda c: c.latency_ms).best = True
        tables.append(table)
    return tables


def status_counts(results) -> dict[str, int]:
    """Trials per status, ``ok`` first."""
    counts: dict[str, int] = {}
    for row in trial_rows(results):
        status = str(row.get("status") or "ok")
        counts[status] = counts.get(status, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (kv[0] != "ok", -kv[1], kv[0])))


def counts_line(counts: dict[str, int]) -> str:
    """``12 trials: 9 ok, 2 unsupported, 1 oom``."""
    total = sum(counts.values())
    parts = ", ".join(f"{n} {status}" for status, n in counts.items())
    return f"{total} trial{'s' if total != 1 else ''}: {parts}" if total else "no trials"


def failures(results) -> list[dict[str, Any]]:
    """Failed trials as ``{label, shape, status, reason}`` rows, in run order."""
    out = []
    for row in trial_rows(results):
        if (row.get("status") or "ok") != "ok":
            shape = shape_of(row)
            text = _describe(shape, [k for _, k in SHAPE])
            out.append(
                {
                    "label": row_label(row),
                    "shape": f"{row.get('wl_phase', '')} {row.get('wl_dtype', '')} {text}".strip(),
                    "status": str(row["status"]),
                    "reason": str(row.get("reason") or ""),
                }
            )
    return out
