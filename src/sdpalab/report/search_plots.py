"""The search's views: the Pareto front (latency against memory, coloured by error, the
recommendation starred) and the sensitivity bars (what each axis costs, with confidence
intervals)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm

from sdpalab.explore.objectives import (
    MEMORY_MEASURES,
    error_field,
    memory_measure,
    memory_of,
    objective_value,
)
from sdpalab.explore.pareto import pareto
from sdpalab.report.figure import bytes_ticks, colors, ok_rows, plt, save
from sdpalab.report.tables import row_label
from sdpalab.run.rundir import frame, from_row, records
from sdpalab.units import format_bytes


def trial_ids(items: Any) -> set[str]:
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


def front_ids(rows: list[dict], *, memory: str = "auto", constraints=None) -> set[str]:
    """Trial ids of the Pareto front of ``rows`` (flat result rows), per shape: the front
    ``sdpalab pareto`` prints (:func:`sdpalab.explore.pareto.pareto`), never one of its own."""
    results = [from_row(r) for r in rows]
    return {r.trial_id for r in pareto(results, memory=memory, constraints=constraints)}


def plot_pareto(
    rows: list[dict],
    path: Path,
    front=None,
    recommendation=None,
    title: str = "",
    *,
    memory: str = "auto",
    constraints=None,
) -> Path | None:
    """Latency against memory (the ``memory`` measure) for every ok trial, coloured by its error
    (log; relative error, or a model's KL), the Pareto front joined as a staircase, the recommendation starred. ``front``:
    Results, dicts, trial ids or a DataFrame; when not given, the front of ``rows`` within
    ``constraints`` as :func:`front_ids` computes it. ``recommendation``: a Result, dict, trial
    id or ``explore.recommend.Recommendation``."""
    rows = [r for r in ok_rows(rows) if r.get("latency_ms") is not None]
    memory_values = {id(r): memory_of(from_row(r), memory) for r in rows}
    rows = [r for r in rows if memory_values[id(r)] is not None]
    if len(rows) < 2:
        return None
    ids = (
        trial_ids(front)
        if front is not None
        else front_ids(rows, memory=memory, constraints=constraints)
    )
    mem = {id(r): memory_values[id(r)] for r in rows}
    front_rows = [r for r in rows if str(r.get("trial_id")) in ids]
    front_rows.sort(key=lambda r: (r["latency_ms"], mem[id(r)]))
    rec_ids = trial_ids(recommendation)
    fig, ax = plt.subplots(figsize=(8.5, 5.2), layout="constrained")
    xs = np.array([r["latency_ms"] for r in rows], dtype=float)
    ys = np.array([mem[id(r)] for r in rows], dtype=float)
    # each row's error: the relative error vs float64, or a model's KL from the stock model
    results = [from_row(r) for r in rows]
    errs = np.array([objective_value(r, "error") or np.nan for r in results], dtype=float)
    kl = all(error_field(r) == "kl_mean_nats" for r in results)
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
        label = "KL from the stock model, nats" if kl else "relative Frobenius error vs float64"
        fig.colorbar(dots, ax=ax, label=label)
    else:
        ax.scatter(xs, ys, color="tab:blue", s=36, zorder=3)
    if front_rows:
        fx, fy = [r["latency_ms"] for r in front_rows], [mem[id(r)] for r in front_rows]
        ax.step(fx, fy, where="post", color="tab:red", lw=1.2, zorder=2)
        ax.scatter(
            fx,
            fy,
            s=110,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=1.4,
            zorder=4,
            label=f"Pareto front ({len(front_rows)} of {len(rows)})",
        )
        for r in front_rows[:12]:
            ax.annotate(
                row_label(r),
                (r["latency_ms"], mem[id(r)]),
                fontsize=6,
                xytext=(4, 4),
                textcoords="offset points",
            )
    for r in rows:
        if str(r.get("trial_id")) in rec_ids:
            ax.scatter(
                [r["latency_ms"]],
                [mem[id(r)]],
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
    else:
        bytes_ticks(ax.yaxis, ys.min(), ys.max())
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: format_bytes(v)))
    ax.set_xlabel("latency (ms, median)")
    measures = sorted({memory_measure(from_row(r), memory) for r in rows})
    ax.set_ylabel("memory: " + ", ".join(MEMORY_MEASURES[m] for m in measures))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title or "latency against memory (lower left is better)")
    return save(fig, path)


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
    palette = colors(methods)
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
                    color=palette[method],
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
    return save(fig, Path(path))
