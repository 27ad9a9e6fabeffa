"""Plots (matplotlib, Agg backend, PNG): whatever applies to the data of a run.

- ``scaling*.png``: prefill latency and peak memory against sequence length per variant,
  log-log, so O(S) and O(S^2) read as slopes 1 and 2; the fitted slope is in the legend.
- ``decode_bandwidth*.png``: decode GB/s against context, the machine's measured copy
  bandwidth drawn as the ceiling.
- ``kv_cache_bytes.png``: KV cache bytes per context token (values + scales) per quantization.
- ``pareto*.png``: latency against memory (the measure the user picks), coloured by error, per
  shape: the front (the one ``sdpalab pareto`` prints) joined, the recommendation starred.
- ``sensitivity.png``: importance of each axis per objective, with confidence intervals.
- ``mask_<mod>.png``: what a mod's mask allows (or, for a bias, its values), like
  attention-gym's visualizations.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from sdpalab.explore.objectives import context_key, context_of
from sdpalab.report.figure import colors, log2_tokens, ok_rows, plt, save, slug
from sdpalab.report.mask_plot import mask_density, plot_mask
from sdpalab.report.search_plots import front_ids, plot_pareto, plot_sensitivity, trial_ids
from sdpalab.report.tables import SHAPE, row_label, trial_rows
from sdpalab.run.rundir import decode_json, from_row
from sdpalab.units import format_bytes

__all__ = [
    "fitted_slope",
    "front_ids",
    "mask_density",
    "plot_decode_bandwidth",
    "plot_kv_bytes",
    "plot_mask",
    "plot_pareto",
    "plot_scaling",
    "plot_sensitivity",
    "render_plots",
]

MAX_PARETO_PLOTS = 4


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
    return "" if len(groups) == 1 else "_" + slug("_".join(str(k) for k in key))


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
    palette = colors(series)
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
            ax.plot(xs, ys, "o-", color=palette[name], label=legend, ms=4)
            drawn += 1
        log2_tokens(ax)
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
    return save(fig, path)


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
    palette = colors(series)
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    for name, members in series.items():
        pts = sorted((r["wl_seq_kv"], r["gbps"]) for r in members)
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, "o-", color=palette[name], label=name, ms=4)
    ceiling = ceiling_gbps(rows, ceilings)
    if ceiling:
        ax.axhline(
            ceiling,
            color="black",
            ls="--",
            lw=1.2,
            label=f"measured copy bandwidth {ceiling:.4g} GB/s",
        )
    log2_tokens(ax)
    ax.set_xlabel("context length (tokens in the KV cache)")
    ax.set_ylabel("achieved bandwidth (GB/s)")
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    note = "" if ceiling else " (ceiling not measured: run `sdpalab doctor`)"
    ax.set_title((title or "decode: bandwidth against context") + note)
    return save(fig, path)


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
    palette = colors(series_names)
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
                color=palette[series],
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
    return save(fig, path)


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
    memory: str = "auto",
    constraints=None,
) -> list[Path]:
    """Render every plot that applies to these results into ``out_dir`` (the PNGs go directly
    there; a run's report uses ``DIR/plots``). Returns the paths written, in a stable order.

    ``results_or_df``: list of Result or the flat DataFrame. ``front`` / ``recommendation``:
    the search's Pareto front and pick (see :func:`plot_pareto`); without ``front``, each
    shape's front is :func:`front_ids`' (``sdpalab pareto``'s, under ``constraints`` and the
    ``memory`` measure). ``ceilings``: the machine's measured ceilings (``copy_gbps``) for the
    decode plot. ``sensitivity``: a table for :func:`plot_sensitivity`.
    """
    out = Path(out_dir)
    rows = trial_rows(results_or_df)
    ok = ok_rows(rows)
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

    # one plot per shape (what competes), the front computed once for all of them
    ids = (
        trial_ids(front)
        if front is not None
        else front_ids(ok, memory=memory, constraints=constraints)
    )
    by_shape: dict[str, list[dict]] = {}
    for r in ok:
        by_shape.setdefault(context_key(from_row(r)), []).append(r)
    if front is not None or recommendation is not None:
        marked = ids | trial_ids(recommendation)
        shapes = [m for m in by_shape.values() if any(str(r["trial_id"]) in marked for r in m)]
    else:
        shapes = [m for m in by_shape.values() if len({row_label(r) for r in m}) >= 3]
        shapes.sort(key=lambda m: (-len(m), -(m[0].get("wl_seq_kv") or 0)))
        shapes = shapes[:MAX_PARETO_PLOTS]
    for members in shapes:
        r = members[0]
        desc = (
            f"{r.get('wl_phase')} B={r.get('wl_batch')} "
            f"Hq={r.get('wl_heads_q')} Hkv={r.get('wl_heads_kv')} "
            f"S={r.get('wl_seq_kv')} D={r.get('wl_head_dim')}"
        )
        meant = context_of(from_row(r)).get("mod")
        if meant is not None and meant != "none":  # the mask: shapes of two masks differ by it
            desc += f" mask={meant}"
        suffix = "" if len(shapes) == 1 else "_" + slug(desc.replace(" ", "_"))
        written.append(
            plot_pareto(
                members,
                out / f"pareto{suffix}.png",
                front=sorted(ids),
                recommendation=recommendation,
                title=f"latency against memory · {desc}",
                memory=memory,
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
        tag = slug(
            name + ("_" + "_".join(f"{k}-{v}" for k, v in sorted(args.items())) if args else "")
        )
        try:
            written.append(plot_mask(name, args, q_len, kv_len, out / f"mask_{tag}.png"))
        except (ValueError, TypeError, KeyError):
            continue  # a mod this version does not know (an old run): no heatmap for it
    return [p for p in written if p is not None]
