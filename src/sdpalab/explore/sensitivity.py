"""Which axes drive each objective: Optuna's importance evaluators and SALib's Sobol indices.

Both read measured results; nothing is re-measured. Every objective is analysed as ``log10`` of
its value (latency, memory and error span decades, and a factor of two should weigh the same
at 1 ms as at 100 ms).

* ``optuna``: the results become the trials of an in-memory study (``create_trial`` with each
  axis's distribution: categorical axes stay categorical, sizes are integer axes on a log
  scale), scored by PED-ANOVA (which axes matter for reaching the best 10 % of trials) and
  fANOVA (share of the variance a random forest attributes to each axis; needs scikit-learn).
  Importances are normalized to sum to 1 per method; the interval is a bootstrap over trials.
* ``salib``: Sobol total-order indices (Saltelli sampling) or Morris mu*, both need a model to
  sample. The model is the measured grid itself: ``log10(objective)`` on the grid of levels,
  interpolated piecewise-linearly in ``log2(size)`` between measured sizes, with categorical
  axes as discrete uniform factors (each level exact, never interpolated). Grid cells without a
  measurement (failed or not run) are filled from the nearest measured cell; the note says how
  many. The interval is SALib's own bootstrap (95 %).

An *axis* is a variant or workload field that varies among the results: ``backend``, ``mod``
(with its arguments folded in when they are not crossed with it, e.g.
``sliding_window(window=64)``), ``kv_quant``, ``kv_args.group_size``, ``seq_kv``, ``batch``,
``dtype``...
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sdpalab.explore.objectives import ERROR_FLOOR, OBJECTIVES, objective_value
from sdpalab.measure.result import Result

METHODS = ("optuna", "salib", "both")
COLUMNS = ["axis", "objective", "method", "importance", "ci_low", "ci_high", "note"]
MAX_GRID_CELLS = 2_000_000
SEARCH_INSTALL = "pip install 'sdpalab[search]'"


@dataclass(frozen=True)
class Axis:
    name: str
    levels: tuple
    """Sorted distinct values (numbers for an ordinal axis)."""
    ordinal: bool
    moves_with: tuple[str, ...] = ()
    """Other fields that vary in lockstep with this one (prefill's ``seq_q`` with ``seq_kv``):
    one factor, analysed once under this name."""

    @property
    def log(self) -> bool:
        return self.ordinal and min(self.levels) > 0 and max(self.levels) / min(self.levels) >= 4


def point_of(result: Result) -> dict[str, Any]:
    """A result's position on every axis (variant and workload fields, flattened)."""
    var, point = result.variant, {}
    for key, value in var.items():
        if key in ("mod_args", "kv_args"):
            for arg, arg_value in (value or {}).items():
                point[f"{key}.{arg}"] = arg_value
        else:
            point[key] = value
    point.update(result.workload)
    return point


def axes_of(results: Sequence[Result]) -> tuple[list[Axis], list[dict[str, Any]]]:
    """The axes along which ``results`` vary, and each result's point on them.

    A ``mod_args.*`` field that some results lack (it belongs to some mods only) is folded
    into the ``mod`` axis (``sliding_window(window=64)``), since it is not an independent factor.
    Fields that move in lockstep (each determines the other) are one axis.
    """
    points = [point_of(r) for r in results]
    keys = sorted({k for p in points for k in p})
    partial = [k for k in keys if k.startswith("mod_args.") and any(k not in p for p in points)]
    if partial:
        for res, point in zip(results, points, strict=True):
            args = res.variant.get("mod_args") or {}
            if args:
                inner = ",".join(f"{k}={v}" for k, v in sorted(args.items()))
                point["mod"] = f"{point['mod']}({inner})"
            for key in list(point):
                if key.startswith("mod_args."):
                    del point[key]
        keys = sorted({k for p in points for k in p})
    axes = []
    for key in keys:
        values = [p.get(key) for p in points]
        distinct = {json_key(v) for v in values}
        if len(distinct) < 2:
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            levels = tuple(sorted(set(values)))
        else:
            levels = tuple(sorted({_label(v) for v in values}))
            for p in points:
                p[key] = _label(p.get(key))
        twin = next((a for a in axes if _lockstep(points, a.name, key)), None)
        if twin is not None:
            axes[axes.index(twin)] = Axis(
                twin.name, twin.levels, twin.ordinal, (*twin.moves_with, key)
            )
            continue
        axes.append(Axis(key, levels, numeric))
    return axes, [{a.name: p[a.name] for a in axes} for p in points]


def _lockstep(points: Sequence[dict[str, Any]], a: str, b: str) -> bool:
    forward: dict[str, str] = {}
    backward: dict[str, str] = {}
    for p in points:
        x, y = json_key(p.get(a)), json_key(p.get(b))
        if forward.setdefault(x, y) != y or backward.setdefault(y, x) != x:
            return False
    return True


def json_key(value: Any) -> str:
    return repr(value)


def _label(value: Any) -> str:
    return "default" if value is None else str(value)


def sensitivity(
    results: Iterable[Result],
    objectives: Sequence[str] = OBJECTIVES,
    method: str = "both",
    *,
    salib_method: str = "sobol",
    n_boot: int = 10,
    n_samples: int = 1024,
    seed: int = 0,
) -> pd.DataFrame:
    """Importance of each varying axis for each objective.

    Returns a DataFrame with columns ``axis, objective, method, importance, ci_low, ci_high,
    note``, sorted by objective, method and importance (largest first). ``method``:
    ``optuna`` (rows for ``ped_anova`` and ``fanova``), ``salib`` (``sobol`` total-order index,
    or ``morris`` mu* with ``salib_method="morris"``), or ``both``. Only ``ok`` results with
    the objective measured are used; a method that cannot run gives one row with a NaN
    importance and the reason in ``note``.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not valid; choose one of: {', '.join(METHODS)}")
    if salib_method not in ("sobol", "morris"):
        raise ValueError(f"salib_method={salib_method!r} is not valid; choose sobol or morris")
    if isinstance(objectives, str):
        objectives = (objectives,)
    results = [r for r in results if r.ok]
    rows: list[dict[str, Any]] = []
    for objective in objectives:
        pairs = [(r, objective_value(r, objective)) for r in results]
        pairs = [(r, v) for r, v in pairs if v is not None and math.isfinite(v)]
        name = "peak_mem_total_bytes" if objective == "memory" else objective
        if len(pairs) < 4:
            rows.append(_empty(name, method, f"{len(pairs)} ok results with {name}; need 4"))
            continue
        used = [r for r, _ in pairs]
        axes, points = axes_of(used)
        y = np.log10(np.maximum([v for _, v in pairs], ERROR_FLOOR))
        if not axes:
            rows.append(_empty(name, method, "no axis varies among the results"))
            continue
        notes = {a.name: axis_note(a, used, points) for a in axes}
        if method in ("optuna", "both"):
            rows += _optuna_rows(axes, points, y, name, n_boot, seed, notes)
        if method in ("salib", "both"):
            rows += _salib_rows(axes, points, y, name, salib_method, n_samples, seed, notes)
    table = pd.DataFrame(rows, columns=COLUMNS)
    if not table.empty:
        order = {o: i for i, o in enumerate(dict.fromkeys(table["objective"]))}
        table = (
            table.assign(_o=table["objective"].map(order), _i=table["importance"].fillna(-1))
            .sort_values(["_o", "method", "_i"], ascending=[True, True, False], kind="stable")
            .drop(columns=["_o", "_i"])
            .reset_index(drop=True)
        )
    return table


def _empty(objective: str, method: str, why: str) -> dict[str, Any]:
    return {
        "axis": "",
        "objective": objective,
        "method": method,
        "importance": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "note": why,
    }


def _row(axis, objective, method, importance, low, high, note) -> dict[str, Any]:
    return {
        "axis": axis,
        "objective": objective,
        "method": method,
        "importance": float(importance),
        "ci_low": float(low),
        "ci_high": float(high),
        "note": note,
    }


# --------------------------------------------------------------------------- optuna


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError(f"sensitivity with Optuna needs optuna: {SEARCH_INSTALL}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def distributions(axes: Sequence[Axis]) -> dict[str, Any]:
    """Optuna distributions for ``axes``: categorical, or int/float (log for sizes)."""
    optuna = _import_optuna()
    dist = {}
    for axis in axes:
        lo, hi = axis.levels[0], axis.levels[-1]
        if not axis.ordinal:
            dist[axis.name] = optuna.distributions.CategoricalDistribution(list(axis.levels))
        elif all(isinstance(v, int) for v in axis.levels):
            dist[axis.name] = optuna.distributions.IntDistribution(lo, hi, log=axis.log and lo >= 1)
        else:
            dist[axis.name] = optuna.distributions.FloatDistribution(lo, hi, log=axis.log)
    return dist


def axis_note(axis: Axis, results: Sequence[Result], points: Sequence[dict]) -> str:
    """What a reader needs about one axis: its kind, its lockstep twins, a mask's sparsity."""
    parts = []
    if not axis.ordinal:
        parts.append(f"categorical, {len(axis.levels)} levels")
    if axis.moves_with:
        parts.append(f"{', '.join(axis.moves_with)} moves with it")
    if axis.name == "mod":
        masked: dict[str, list[float]] = {}
        for res, point in zip(results, points, strict=True):
            if res.allowed_fraction is not None:
                masked.setdefault(point["mod"], []).append(1.0 - res.allowed_fraction)
        if masked:
            shown = ", ".join(
                f"{lvl} {_percent(v)}"
                for lvl, v in sorted(masked.items(), key=lambda kv: np.mean(kv[1]))
            )
            parts.append(f"mask sparsity (share of scores skipped) by level: {shown}")
    return "; " + "; ".join(parts) if parts else ""


def _percent(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    if hi - lo < 0.005:
        return f"{lo:.0%}"
    return f"{lo:.0%}-{hi:.0%}"


def _optuna_rows(axes, points, y, objective, n_boot, seed, axis_notes) -> list[dict[str, Any]]:
    optuna = _import_optuna()

    def as_trials(dist):
        return [
            optuna.trial.create_trial(params=p, distributions=dist, value=float(v))
            for p, v in zip(points, y, strict=True)
        ]

    # fANOVA splits sizes as numbers; PED-ANOVA's Parzen estimator on a 50-step grid turns a
    # size measured at 2 or 3 levels into spikes whose divergence dwarfs every categorical
    # axis, so it sees each axis as categorical over its measured levels
    by_method = {
        "fanova": as_trials(distributions(axes)),
        "ped_anova": as_trials(
            {a.name: optuna.distributions.CategoricalDistribution(list(a.levels)) for a in axes}
        ),
    }
    trials = by_method["fanova"]
    # PED-ANOVA compares the best trials with all: keep at least 5 in the best group
    quantile = min(0.5, max(0.1, 5 / len(trials)))
    evaluators = {
        "ped_anova": lambda s: optuna.importance.PedAnovaImportanceEvaluator(
            target_quantile=quantile
        )
    }
    notes = {
        "ped_anova": f"PED-ANOVA: which axes matter for reaching the best {quantile:.0%} of "
        "trials (every axis as categorical over its measured levels)",
        "fanova": "fANOVA: variance share by a random forest",
    }
    try:
        import sklearn  # noqa: F401  (fANOVA's forest)

        evaluators["fanova"] = lambda s: optuna.importance.FanovaImportanceEvaluator(
            n_trees=32, max_depth=16, seed=s
        )
    except ImportError:
        pass
    rows = []
    rng = np.random.default_rng(seed)
    for name, make in evaluators.items():
        trials = by_method[name]
        try:
            full = _importances(optuna, trials, make(seed))
        except Exception as err:  # e.g. too few trials above the quantile
            rows.append(_empty(objective, name, f"{name} failed: {type(err).__name__}: {err}"))
            continue
        boots = []
        for b in range(n_boot):
            pick = rng.integers(0, len(trials), len(trials))
            try:
                boots.append(_importances(optuna, [trials[i] for i in pick], make(seed + b + 1)))
            except Exception:  # a resample may lack variety; it just doesn't count
                continue
        note = (
            f"{notes[name]}; log10 values, {len(trials)} trials, normalized to sum 1; "
            f"CI: bootstrap 2.5-97.5 % over {len(boots)} resamples"
        )
        for axis in axes:
            samples = [b.get(axis.name, 0.0) for b in boots] or [full.get(axis.name, 0.0)]
            low, high = np.percentile(samples, [2.5, 97.5])
            rows.append(
                _row(
                    axis.name,
                    objective,
                    name,
                    full.get(axis.name, 0.0),
                    low,
                    high,
                    note + axis_notes[axis.name],
                )
            )
    if "fanova" not in evaluators:
        rows.append(
            _empty(objective, "fanova", "fANOVA needs scikit-learn: pip install scikit-learn")
        )
    return rows


def _importances(optuna, trials, evaluator) -> dict[str, float]:
    study = optuna.create_study(direction="minimize")
    study.add_trials(trials)
    values = np.array([t.value for t in trials])
    if np.ptp(values) == 0:
        return {name: 0.0 for name in trials[0].params}
    return optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True)


# --------------------------------------------------------------------------- SALib


def _salib_rows(axes, points, y, objective, salib_method, n_samples, seed, axis_notes):
    try:
        from SALib.analyze import morris as morris_analyze
        from SALib.analyze import sobol as sobol_analyze
        from SALib.sample import morris as morris_sample
        from SALib.sample import sobol as sobol_sample
    except ImportError:
        return [_empty(objective, salib_method, f"SALib is not installed: {SEARCH_INSTALL}")]
    cells = math.prod(len(a.levels) for a in axes)
    if cells > MAX_GRID_CELLS:
        return [
            _empty(
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
            _row(a.name, objective, salib_method, 0.0, 0.0, 0.0, "objective is constant")
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
                f"Sobol total-order ST (first-order S1={out['S1'][i]:.2f}) "
                + base
                + axis_notes[axis.name]
            )
            rows.append(
                _row(axis.name, objective, "sobol", st, max(0.0, st - conf), st + conf, note)
            )
    else:
        x = morris_sample.sample(problem, max(16, n_samples // (len(axes) + 1)), seed=seed)
        out = morris_analyze.analyze(problem, x, model(x), seed=seed)
        for i, axis in enumerate(axes):
            mu, conf = out["mu_star"][i], out["mu_star_conf"][i]
            note = (
                f"Morris mu* (mean |elementary effect| in log10 units, "
                f"sigma={out['sigma'][i]:.2f}) " + base + axis_notes[axis.name]
            )
            rows.append(
                _row(axis.name, objective, "morris", mu, max(0.0, mu - conf), mu + conf, note)
            )
    return rows


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
