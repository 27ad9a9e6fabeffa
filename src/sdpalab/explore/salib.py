"""Sobol and Morris indices (SALib) over the measured grid of a sweep.

SALib samples a model; the model here is the measured grid itself: ``log10(objective)`` on the
grid of levels, interpolated piecewise-linearly in ``log2(size)`` between measured sizes, with
categorical axes as discrete uniform factors (each level exact, never interpolated). Grid cells
without a measurement (failed or not run) take the value of the nearest measured cell; the note
says how many.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sdpalab.explore.factors import Axis, empty_row, row

MAX_GRID_CELLS = 2_000_000
SEARCH_INSTALL = "pip install 'sdpalab[search]'"


def salib_rows(axes, points, y, objective, salib_method, n_samples, seed, axis_notes):
    try:
        from SALib.analyze import morris as morris_analyze
        from SALib.analyze import sobol as sobol_analyze
        from SALib.sample import morris as morris_sample
        from SALib.sample import sobol as sobol_sample
    except ImportError:
        return [empty_row(objective, salib_method, f"SALib is not installed: {SEARCH_INSTALL}")]
    cells = math.prod(len(a.levels) for a in axes)
    if cells > MAX_GRID_CELLS:
        return [
            empty_row(
                objective,
                salib_method,
                f"the grid of levels has {cells} cells (limit {MAX_GRID_CELLS})",
            )
        ]
    model, imputed = grid_model(axes, points, y)
    problem = {
        "num_vars": len(axes),
        "names": [a.name for a in axes],
        "bounds": [_bounds(a) for a in axes],
    }
    if np.ptp(y) == 0:
        return [
            row(a.name, objective, salib_method, 0.0, 0.0, 0.0, "objective is constant")
            for a in axes
        ]
    base = (
        f"on the measured grid ({len(y)} points, {imputed} of {cells} cells filled from "
        "the nearest measured cell), log10 values, sizes interpolated linearly in log2 "
        "between measured levels, categorical axes as discrete uniform factors; CI 95 % "
        "(SALib bootstrap)"
    )
    rows = []
    if salib_method == "sobol":
        n = 1 << max(6, math.ceil(math.log2(n_samples)))  # Saltelli wants a power of 2
        x = sobol_sample.sample(problem, n, calc_second_order=False, seed=seed)
        out = sobol_analyze.analyze(problem, model(x), calc_second_order=False, seed=seed)
        for i, axis in enumerate(axes):
            st, conf = out["ST"][i], out["ST_conf"][i]
            note = (
                "Sobol total-order index ST "
                + base
                + f"; first-order S1={out['S1'][i]:.2f}"
                + axis_notes[axis.name]
            )
            rows.append(row(axis.name, objective, "sobol", st, *_interval(st, conf), note))
    else:
        x = morris_sample.sample(problem, max(16, n_samples // (len(axes) + 1)), seed=seed)
        out = morris_analyze.analyze(problem, x, model(x), seed=seed)
        for i, axis in enumerate(axes):
            mu, conf = out["mu_star"][i], out["mu_star_conf"][i]
            note = (
                "Morris mu* (mean |elementary effect|, log10 units) "
                + base
                + f"; sigma={out['sigma'][i]:.2f}"
                + axis_notes[axis.name]
            )
            rows.append(row(axis.name, objective, "morris", mu, *_interval(mu, conf), note))
    return rows


def _interval(value: float, conf: float) -> tuple[float, float]:
    """``value ± conf`` clipped at 0 (an index is non-negative), always holding ``value``: ST
    can come out a hair below 0 from sampling error. NaN when SALib gave no interval."""
    if not math.isfinite(conf):
        return math.nan, math.nan
    return min(value, max(0.0, value - conf)), max(value, value + conf)


def _coords(axis: Axis) -> np.ndarray:
    if not axis.ordinal:
        return np.arange(len(axis.levels), dtype=float)
    levels = np.asarray(axis.levels, dtype=float)
    return np.log2(levels) if axis.log else levels


def _bounds(axis: Axis) -> list[float]:
    if not axis.ordinal:
        return [0.0, float(len(axis.levels))]  # floor() maps [i, i+1) to level i
    c = _coords(axis)
    return [float(c[0]), float(c[-1])]


def grid_model(axes: Sequence[Axis], points: Sequence[dict[str, Any]], y: np.ndarray):
    """A vectorized model ``f(X)`` over SALib's sample space, and the number of imputed cells.

    The table holds the mean ``log10`` value of each measured cell; an empty cell takes the
    value of the nearest measured cell (index distance, each axis scaled to [0, 1]).
    """
    from scipy.interpolate import RegularGridInterpolator
    from scipy.spatial import cKDTree

    shape = tuple(len(a.levels) for a in axes)
    index = [{lvl: i for i, lvl in enumerate(a.levels)} for a in axes]
    total = np.zeros(shape)
    count = np.zeros(shape)
    for point, value in zip(points, y, strict=True):
        cell = tuple(index[k][point[a.name]] for k, a in enumerate(axes))
        total[cell] += value
        count[cell] += 1
    filled = count > 0
    table = np.where(filled, total / np.maximum(count, 1), np.nan)
    imputed = int((~filled).sum())
    if imputed:
        scale = np.array([max(1, n - 1) for n in shape], dtype=float)
        known = np.argwhere(filled) / scale
        missing = np.argwhere(~filled)
        _, nearest = cKDTree(known).query(missing / scale)
        table[tuple(missing.T)] = table[filled][nearest]
    coords = [_coords(a) for a in axes]
    interp = RegularGridInterpolator(coords, table, method="linear")
    categorical = [k for k, a in enumerate(axes) if not a.ordinal]

    def model(x: np.ndarray) -> np.ndarray:
        x = np.array(x, dtype=float)
        for k in categorical:
            x[:, k] = np.clip(np.floor(x[:, k]), 0, shape[k] - 1)
        for k, c in enumerate(coords):
            x[:, k] = np.clip(x[:, k], c[0], c[-1])
        return interp(x)

    return model, imputed
