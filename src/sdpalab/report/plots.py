"""Plots (matplotlib, Agg backend, PNG): whatever applies to the data of a run.

- ``scaling*.png``: prefill latency and peak memory against sequence length per variant,
  log-log, so O(S) and O(S^2) read as slopes 1 and 2; the fitted slope is in the legend.
- ``decode_bandwidth*.png``: decode GB/s against context, the machine's measured copy
  bandwidth drawn as the ceiling.
- ``kv_cache_bytes.png``: KV cache bytes per context token (values + scales) per quantization.
- ``pareto*.png``: latency against peak memory, coloured by error, the front joined, the
  recommendation starred.
- ``sensitivity.png``: importance of each axis per objective, with confidence intervals.
- ``mask_<mod>.png``: what a mod's mask allows (or, for a bias, its values), like
  attention-gym's visualizations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, ever
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

from sdpalab.report.load import decode_json, frame, records
from sdpalab.report.tables import SHAPE, format_bytes, row_label

DPI = 110
MAX_PARETO_PLOTS = 4
MASK_CELLS = 256
"""Heatmaps of longer sequences average the mask over cells of this many per axis."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-")[:80] or "x"


def _colors(labels: Iterable[str]) -> dict[str, Any]:
    names = sorted(set(labels))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)  # constrained layout: one draw, no tight bbox pass
    plt.close(fig)
    return path


def fitted_slope(x: Iterable[float], y: Iterable[float]) -> float | None:
    """Slope of log(y) against log(x) by least squares; None with fewer than two positive
    points at distinct x."""
    pts = [(a, b) for a, b in zip(x, y, strict=True) if a and b and a > 0 and b > 0]
    if len({a for a, _ in pts}) < 2:
        return None
    lx, ly = np.log([a for a, _ in pts]), np.log([b for _, b in pts])
    return float(np.polyfit(lx, ly, 1)[0])


def _varying(rows: list[dict], fields: Iterable[str]) -> list[str]:
    return [f for f in fields if len({json.dumps(r.get(f), default=str) for r in rows}) > 1]


def _series_name(row: dict, extra: list[str]) -> str:
    short = dict(SHAPE)
    suffix = " ".join(f"{short.get(f[3:], f[3:])}={row.get(f)}" for f in extra)
    return f"{row_label(row)} {suffix}".strip()


def _group(rows: list[dict], fields: tuple[str, ...]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for row in rows:
        out.setdefault(tuple(row.get(f) for f in fields), []).append(row)
    return out


def _group_suffix(key: tuple, groups: dict) -> str:
    return "" if len(groups) == 1 else "_" + _slug("_".join(str(k) for k in key))


def _log2_tokens(ax) -> None:
    # Sequence lengths are usually powers of two: a log2 x axis labelled with plain integers.
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))


def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if (r.get("status") or "ok") == "ok"]


# -- scaling with sequence length -------------------------------------------------------------


def plot_scaling(rows: list[dict], path: Path, title: str = "") -> Path | None:
    """Latency and peak memory against sequence length (``wl_seq_kv``), log-log, one line per
    variant (and per other varying shape field), fitted slope in the legend."""
    others = _varying(rows, ("wl_batch", "wl_heads_q", "wl_heads_kv", "wl_head_dim"))
    series: dict[str, list[dict]] = {}
    for row in rows:
        series.setdefault(_series_name(row, others), []).append(row)
    series = {k: v for k, v in series.items() if len({r["wl_seq_kv"] for r in v}) >= 2}
    if not series:
        return None
    colors = _colors(series)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    for ax, metric, ylabel in (
        (axes[0], "latency_ms", "latency (ms, median)"),
        (axes[1], "peak_mem_bytes", "peak memory above inputs (bytes)"),
    ):
        drawn = 0
        for name, members in series.items():
            pts = sorted(
                (r["wl_seq_kv"], r.get(metric))
                for r in members
                if r.get(metric) is not None and r.get(metric) > 0
            )
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            slope = fitted_slope(xs, ys)
            legend = f"{name} (slope {slope:.2f})" if slope is not None else name
            ax.plot(xs, ys, "o-", color=colors[name], label=legend, ms=4)
            drawn += 1
        _log2_tokens(ax)
        if metric == "peak_mem_bytes":
            ax.set_yscale("log", base=2)
            ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: format_bytes(v)))
        else:
            ax.set_yscale("log")
        ax.set_xlabel("sequence length S (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if drawn:
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title or "prefill scaling with sequence length")
    return _save(fig, path)


# -- decode bandwidth -------------------------------------------------------------------------


def ceiling_gbps(rows: list[dict], ceilings: dict | None = None) -> float | None:
    """The machine's measured copy bandwidth: from ``ceilings`` (``copy_gbps``) when given,
    else recovered from the rows as ``gbps / frac_peak_bw`` (the ceiling they were divided by)."""
    if ceilings and isinstance(ceilings.get("copy_gbps"), int | float):
        return float(ceilings["copy_gbps"])
    derived = [
        r["gbps"] / r["frac_peak_bw"] for r in rows if r.get("gbps") and r.get("frac_peak_bw")
    ]
    return float(np.median(derived)) if derived else None


def plot_decode_bandwidth(
    rows: list[dict], path: Path, ceilings: dict | None = None, title: str = ""
) -> Path | None:
    """Achieved GB/s of a decode step against the context length, per variant, with the
    measured copy bandwidth as the ceiling line."""
    rows = [r for r in rows if r.get("gbps")]
    if not rows:
        return None
    others = _varying(rows, ("wl_batch", "wl_heads_q", "wl_heads_kv", "wl_head_dim"))
    series: dict[str, list[dict]] = {}
    for row in rows:
        series.setdefault(_series_name(row, others), []).append(row)
    colors = _colors(series)
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    for name, members in series.items():
        pts = sorted((r["wl_seq_kv"], r["gbps"]) for r in members)
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, "o-", color=colors[name], label=name, ms=4)
    ceiling = ceiling_gbps(rows, ceilings)
    if ceiling:
        ax.axhline(
            ceiling,
            color="black",
            ls="--",
            lw=1.2,
            label=f"measured copy bandwidth {ceiling:.4g} GB/s",
        )
    _log2_tokens(ax)
    ax.set_xlabel("context length (tokens in the KV cache)")
    ax.set_ylabel("achieved bandwidth (GB/s)")
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(
        title
        or "decode: bandwidth against context" + ("" if ceiling else " (ceiling not measured)")
    )
    return _save(fig, path)


# -- KV cache bytes per token -----------------------------------------------------------------


def plot_kv_bytes(rows: list[dict], path: Path) -> Path | None:
    """KV cache bytes per context token (values, scales and metadata) for each quantization,
    a bar per cache layout, annotated with the saving against the unquantized cache."""
    from sdpalab.spec import KV_QUANTS

    rows = [r for r in rows if r.get("kv_cache_bytes") and r.get("wl_seq_kv")]
    if not rows:
        return None
    shapes = _varying(rows, ("wl_heads_kv", "wl_head_dim", "wl_dtype"))
    per: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        series = str(r.get("v_kv_cache") or "?")
        if shapes:
            series += " " + " ".join(f"{f[3:]}={r.get(f)}" for f in shapes)
        per.setdefault((series, str(r.get("v_kv_quant") or "none")), []).append(
            r["kv_cache_bytes"] / (r.get("wl_batch") or 1) / r["wl_seq_kv"]
        )
    quants = [q for q in KV_QUANTS if any(q == k[1] for k in per)]
    quants += sorted({k[1] for k in per} - set(quants))
    series_names = sorted({k[0] for k in per})
    colors = _colors(series_names)
    width = 0.8 / len(series_names)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(quants) + 2), 4.6), layout="constrained")
    for i, series in enumerate(series_names):
        base = per.get((series, "none"))
        base_value = float(np.median(base)) if base else None
        for j, quant in enumerate(quants):
            values = per.get((series, quant))
            if not values:
                continue
            value = float(np.median(values))
            x = j + (i - (len(series_names) - 1) / 2) * width
            ax.bar(
                x,
                value,
                width=width * 0.95,
                color=colors[series],
                label=series
                if j == next(k for k, q in enumerate(quants) if per.get((series, q)))
                else None,
            )
            note = format_bytes(value)
            if base_value and quant != "none":
                note += f"\n{base_value / value:.1f}x smaller"
            ax.annotate(note, (x, value), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(quants)), quants)
    ax.set_xlabel("KV quantization")
    ax.set_ylabel("KV cache bytes per context token (all heads)")
    ax.margins(y=0.2)
    ax.legend(fontsize=7, title="cache layout", title_fontsize=7)
    ax.set_title("KV cache size per token (values + scales + metadata)")
    return _save(fig, path)


# -- Pareto front -----------------------------------------------------------------------------


def _ids(items: Any) -> set[str]:
    """Trial ids from a list of Results / dicts / ids, a DataFrame with ``trial_id``, or a
    Recommendation (its ``best``)."""
    if items is None:
        return set()
    if hasattr(items, "columns"):
        return {str(t) for t in items["trial_id"]} if "trial_id" in items.columns else set()
    if isinstance(items, str | dict) or hasattr(items, "trial_id") or hasattr(items, "best"):
        items = [items]
    out = set()
    for item in items:
        if isinstance(item, str):
            out.add(item)
        elif isinstance(item, dict):
            out.add(str(item.get("trial_id")))
        elif hasattr(item, "trial_id"):
            out.add(str(item.trial_id))
        elif hasattr(getattr(item, "best", None), "trial_id"):  # explore.pareto.Recommendation
            out.add(str(item.best.trial_id))
    return out


def pareto_front(rows: list[dict], objectives=("latency_ms", "peak_mem_bytes")) -> list[dict]:
    """Rows no other row beats on every objective (all minimized), sorted by the first."""
    pts = [r for r in rows if all(r.get(o) is not None for o in objectives)]
    front = [
        r
        for r in pts
        if not any(
            all(o[k] <= r[k] for k in objectives) and any(o[k] < r[k] for k in objectives)
            for o in pts
        )
    ]
    return sorted(front, key=lambda r: tuple(r[o] for o in objectives))


def memory_column(rows: list[dict]) -> str:
    """The memory objective, as ``explore.pareto`` takes it: the total peak
    (``peak_mem_total_bytes``: inputs and KV cache included, so a smaller cache counts) when
    every row has it, else the peak above the inputs (``peak_mem_bytes``)."""
    if rows and all(r.get("peak_mem_total_bytes") is not None for r in rows):
        return "peak_mem_total_bytes"
    return "peak_mem_bytes"


def plot_pareto(
    rows: list[dict], path: Path, front=None, recommendation=None, title: str = ""
) -> Path | None:
    """Latency against peak memory for every ok trial, coloured by relative error (log), the
    Pareto front joined as a staircase, the recommendation starred. ``front``: Results, dicts,
    trial ids or a DataFrame (computed here from latency and memory when not given);
    ``recommendation``: a Result, dict, trial id or ``explore.pareto.Recommendation``."""
    rows = [r for r in _ok(rows) if r.get("latency_ms") is not None]
    mem = memory_column(rows)
    rows = [r for r in rows if r.get(mem) is not None]
    if len(rows) < 2:
        return None
    front_ids = _ids(front)
    if front_ids:
        front_rows = [r for r in rows if str(r.get("trial_id")) in front_ids]
    else:
        front_rows = pareto_front(rows, ("latency_ms", mem))
    front_rows.sort(key=lambda r: (r["latency_ms"], r[mem]))
    rec_ids = _ids(recommendation)
    fig, ax = plt.subplots(figsize=(8.5, 5.2), layout="constrained")
    xs = np.array([r["latency_ms"] for r in rows], dtype=float)
    ys = np.array([r[mem] for r in rows], dtype=float)
    errs = np.array([r.get("rel_fro_err") or np.nan for r in rows], dtype=float)
    positive = errs[np.isfinite(errs) & (errs > 0)]
    if positive.size:
        errs = np.where(np.isfinite(errs) & (errs > 0), errs, positive.min())
        norm = LogNorm(vmin=positive.min(), vmax=max(positive.max(), positive.min() * 1.0001))
        dots = ax.scatter(
            xs,
            ys,
            c=errs,
            cmap="viridis",
            norm=norm,
            s=36,
            edgecolors="k",
            linewidths=0.3,
            zorder=3,
        )
        fig.colorbar(dots, ax=ax, label="relative Frobenius error vs float64")
    else:
        ax.scatter(xs, ys, color="tab:blue", s=36, zorder=3)
    if front_rows:
        ax.step(
            [r["latency_ms"] for r in front_rows],
            [r[mem] for r in front_rows],
            where="post",
            color="tab:red",
            lw=1.2,
            zorder=2,
            label=f"Pareto front ({len(front_rows)} of {len(rows)})",
        )
        for r in front_rows[:12]:
            ax.annotate(
                row_label(r),
                (r["latency_ms"], r[mem]),
                fontsize=6,
                xytext=(4, 4),
                textcoords="offset points",
            )
    for r in rows:
        if str(r.get("trial_id")) in rec_ids:
            ax.scatter(
                [r["latency_ms"]],
                [r[mem]],
                marker="*",
                s=320,
                facecolors="gold",
                edgecolors="black",
                zorder=4,
                label=f"recommended: {row_label(r)}",
            )
    if (xs > 0).all() and xs.max() / xs.min() > 20:
        ax.set_xscale("log")
    if (ys > 0).all() and ys.max() / ys.min() > 20:
        ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: format_bytes(v)))
    ax.set_xlabel("latency (ms, median)")
    ax.set_ylabel(
        "peak memory, total" if mem == "peak_mem_total_bytes" else "peak memory above inputs"
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title or "latency against memory (lower left is better)")
    return _save(fig, path)


# -- sensitivity ------------------------------------------------------------------------------


def plot_sensitivity(table, path: str | Path) -> Path | None:
    """Bars of each axis's importance per objective, with confidence intervals as error bars.

    ``table``: a DataFrame (or list of dicts) with columns axis, objective, importance, ci_low,
    ci_high, and optionally method (one bar per method, side by side). Rows without an
    importance (a method that could not run) are left out.
    """
    rows = records(frame(table)) if hasattr(table, "columns") else list(table or [])
    rows = [r for r in rows if r.get("importance") is not None and r.get("axis")]
    if not rows:
        return None
    objectives = list(dict.fromkeys(str(r["objective"]) for r in rows))
    methods = list(dict.fromkeys(str(r.get("method") or "") for r in rows))
    colors = _colors(methods)
    n_axes = max(len({r["axis"] for r in rows if str(r["objective"]) == o}) for o in objectives)
    fig, axes = plt.subplots(
        1,
        len(objectives),
        squeeze=False,
        layout="constrained",
        figsize=(4.4 * len(objectives), 0.45 * n_axes * max(1, len(methods) * 0.7) + 1.8),
    )
    height = 0.8 / len(methods)
    for ax, objective in zip(axes[0], objectives, strict=True):
        members = [r for r in rows if str(r["objective"]) == objective]
        # Axes ordered by their largest importance, the most important at the top.
        order = sorted(
            {r["axis"] for r in members},
            key=lambda a: max(r["importance"] for r in members if r["axis"] == a),
        )
        for k, method in enumerate(methods):
            for r in members:
                if str(r.get("method") or "") != method:
                    continue
                y = order.index(r["axis"]) + (k - (len(methods) - 1) / 2) * height
                value = r["importance"]
                low = r["ci_low"] if r.get("ci_low") is not None else value
                high = r["ci_high"] if r.get("ci_high") is not None else value
                err = [[max(value - low, 0.0)], [max(high - value, 0.0)]]
                ax.barh(
                    y,
                    value,
                    height=height * 0.9,
                    xerr=err,
                    color=colors[method],
                    alpha=0.85,
                    capsize=3,
                    label=method or None,
                )
        ax.set_yticks(range(len(order)), [str(a) for a in order])
        ax.set_title(objective)
        ax.set_xlabel("importance")
        ax.grid(True, axis="x", alpha=0.3)
        if len(methods) > 1:
            handles, labels = ax.get_legend_handles_labels()
            unique = dict(zip(labels, handles, strict=True))
            ax.legend(unique.values(), unique.keys(), fontsize=7, title="method", title_fontsize=7)
    fig.suptitle("what each axis costs (sensitivity, with confidence intervals)")
    return _save(fig, Path(path))


# -- mask heatmaps ----------------------------------------------------------------------------


def mask_density(
    mod: str, mod_args: dict, q_len: int, kv_len: int, cells: int = MASK_CELLS
) -> tuple[np.ndarray, str]:
    """What mod ``mod`` does on a ``q_len x kv_len`` problem (bottom-right aligned), as an array
    of at most ``cells`` per axis: for a mask the fraction of (query, key) pairs allowed in each
    cell (exactly 0/1 when no cell is averaged); for an additive bias its value on head 0.
    Returns (array [rows, cols], kind) with kind ``mask``, ``bias`` or ``none``."""
    import torch

    from sdpalab.attention.mods import make_mod

    built = make_mod(mod, mod_args, q_len=q_len, kv_len=kv_len, heads=1, device="cpu")

    def positions(length: int) -> tuple[torch.Tensor, int, int]:
        n = min(length, cells)
        per = 1 if n == length else 4
        centres = (torch.arange(n * per, dtype=torch.float64) + 0.5) * length / (n * per)
        return centres.floor().long().clamp_(0, length - 1), n, per

    q_idx, nq, pq = positions(q_len)
    kv_idx, nk, pk = positions(kv_len)
    zero = torch.zeros(1, 1, 1, 1, dtype=torch.long)
    q, kv = q_idx.view(1, 1, -1, 1), kv_idx.view(1, 1, 1, -1)
    if built.mask_mod is not None:
        grid = built.mask_mod(zero, zero, q, kv).expand(1, 1, q.shape[2], kv.shape[3])
        kind = "mask"
    elif built.score_mod is not None and built.additive:
        score = torch.zeros((), dtype=torch.float64)
        grid = built.score_mod(score, zero, zero, q, kv).expand(1, 1, q.shape[2], kv.shape[3])
        kind = "bias"
    else:
        return np.ones((nq, nk)), "none"
    values = grid[0, 0].to(torch.float64).view(nq, pq, nk, pk).mean(dim=(1, 3))
    return values.numpy(), kind


def plot_mask(mod: str, mod_args: dict, q_len: int, kv_len: int, path: str | Path) -> Path:
    """Heatmap of ``mod``'s mask on a ``q_len x kv_len`` problem (queries down, keys across,
    bottom-right aligned), like attention-gym's visualizations; for an additive score mod the
    bias on head 0. Long sequences are shown as the allowed fraction per cell."""
    values, kind = mask_density(mod, mod_args, q_len, kv_len)
    args = ", ".join(f"{k}={v}" for k, v in sorted(mod_args.items()))
    name = f"{mod}({args})" if args else mod
    fig, ax = plt.subplots(
        figsize=(5.6, 5.6 * min(2.0, max(0.25, q_len / kv_len))), layout="constrained"
    )
    exact = values.shape == (q_len, kv_len)
    extent = (0, kv_len, q_len, 0)
    if kind == "bias":
        im = ax.imshow(values, cmap="RdBu_r", extent=extent, aspect="auto", interpolation="nearest")
        fig.colorbar(im, ax=ax, label="bias added to the score (head 0)")
    else:
        im = ax.imshow(
            values,
            cmap="Blues",
            vmin=0,
            vmax=1,
            extent=extent,
            aspect="auto",
            interpolation="nearest",
        )
        if not exact:
            fig.colorbar(im, ax=ax, label="fraction of pairs allowed")
        allowed = float(values.mean())
        ax.text(
            0.99,
            0.01,
            f"{allowed:.1%} of pairs attend",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.8, "lw": 0},
        )
    if exact and max(q_len, kv_len) <= 32:
        ax.set_xticks(np.arange(kv_len + 1), minor=True)
        ax.set_yticks(np.arange(q_len + 1), minor=True)
        ax.grid(True, which="minor", color="white", lw=0.5)
    ax.set_xlabel("key position (kv_idx)")
    ax.set_ylabel("query position (q_idx)")
    ax.set_title(f"{name}: {q_len} x {kv_len}", fontsize=10)
    return _save(fig, Path(path))


def _mask_geometry(rows: list[dict]) -> tuple[int, int]:
    # The smallest problem the mod ran on; decode steps are shown as the whole prefill.
    def size(r: dict) -> tuple[int, int]:
        kv = int(r.get("wl_seq_kv") or 64)
        q = int(r.get("wl_seq_q") or kv) if r.get("wl_phase") == "prefill" else kv
        return q, kv

    return min((size(r) for r in rows), key=lambda s: (s[1], s[0]))


# -- everything that applies ------------------------------------------------------------------


def render_plots(
    results_or_df,
    out_dir: str | Path,
    *,
    front=None,
    recommendation=None,
    ceilings: dict | None = None,
    sensitivity=None,
) -> list[Path]:
    """Render every plot that applies to these results into ``out_dir`` (the PNGs go directly
    there; a run's report uses ``DIR/plots``). Returns the paths written, in a stable order.

    ``results_or_df``: list of Result or the flat DataFrame. ``front`` / ``recommendation``:
    the search's Pareto front and pick (see :func:`plot_pareto`). ``ceilings``: the machine's
    measured ceilings (``copy_gbps``) for the decode plot. ``sensitivity``: a table for
    :func:`plot_sensitivity`.
    """
    out = Path(out_dir)
    rows = records(frame(results_or_df))
    ok = _ok(rows)
    written: list[Path | None] = []

    prefill = [r for r in ok if r.get("wl_phase") == "prefill"]
    groups = _group(prefill, ("wl_dtype", "wl_device"))
    for key, members in groups.items():
        title = "prefill scaling with sequence length · " + " · ".join(map(str, key))
        written.append(
            plot_scaling(members, out / f"scaling{_group_suffix(key, groups)}.png", title=title)
        )

    decode = [r for r in ok if r.get("wl_phase") == "decode"]
    groups = _group(decode, ("wl_dtype", "wl_device"))
    for key, members in groups.items():
        title = "decode: bandwidth against context · " + " · ".join(map(str, key))
        written.append(
            plot_decode_bandwidth(
                members,
                out / f"decode_bandwidth{_group_suffix(key, groups)}.png",
                ceilings=ceilings,
                title=title,
            )
        )

    written.append(plot_kv_bytes(ok, out / "kv_cache_bytes.png"))

    if front is not None or recommendation is not None:
        written.append(
            plot_pareto(ok, out / "pareto.png", front=front, recommendation=recommendation)
        )
    else:
        fields = (*(f"wl_{name}" for name, _ in SHAPE), "wl_phase", "wl_dtype", "wl_device")
        by_workload = _group(ok, fields)
        candidates = [(k, v) for k, v in by_workload.items() if len({row_label(r) for r in v}) >= 3]
        candidates.sort(key=lambda kv: (-len(kv[1]), -(kv[1][0].get("wl_seq_kv") or 0)))
        for _, members in candidates[:MAX_PARETO_PLOTS]:
            r = members[0]
            desc = (
                f"{r.get('wl_phase')} {r.get('wl_dtype')} B={r.get('wl_batch')} "
                f"Hq={r.get('wl_heads_q')} Hkv={r.get('wl_heads_kv')} "
                f"S={r.get('wl_seq_kv')} D={r.get('wl_head_dim')}"
            )
            suffix = "" if len(candidates) == 1 else "_" + _slug(desc.replace(" ", "_"))
            written.append(
                plot_pareto(
                    members, out / f"pareto{suffix}.png", title=f"latency against memory · {desc}"
                )
            )

    if sensitivity is not None:
        written.append(plot_sensitivity(sensitivity, out / "sensitivity.png"))

    mods: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        name = r.get("v_mod")
        if name and name != "none":
            args = decode_json(r.get("v_mod_args")) or {}
            mods.setdefault((str(name), json.dumps(args, sort_keys=True)), []).append(r)
    for (name, args_json), members in mods.items():
        args = json.loads(args_json)
        q_len, kv_len = _mask_geometry(members)
        slug = _slug(
            name + ("_" + "_".join(f"{k}-{v}" for k, v in sorted(args.items())) if args else "")
        )
        try:
            written.append(plot_mask(name, args, q_len, kv_len, out / f"mask_{slug}.png"))
        except (ValueError, TypeError, KeyError):
            continue  # a mod this version does not know (an old run): no heatmap for it
    return [p for p in written if p is not None]
