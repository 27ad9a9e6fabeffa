"""Heatmaps of a mod: what its mask allows, or the bias it adds, like attention-gym's
visualizations."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdpalab.report.figure import plt, save

MASK_CELLS = 256
"""Heatmaps of longer sequences average the mask over this many cells per axis."""


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
    return save(fig, Path(path))
