"""Which axes drive each objective: Optuna's importance evaluators and SALib's Sobol indices.

Both read measured results; nothing is re-measured. Every objective is analysed as ``log10`` of
its value (latency, memory and error span decades, and a factor of two should weigh the same
at 1 ms as at 100 ms).

* ``optuna``: the results become the trials of an in-memory study (``create_trial`` with each
  axis's distribution: categorical axes stay categorical, sizes are integer axes on a log
  scale), scored by PED-ANOVA (which axes matter for reaching the best 10 % of trials) and
  fANOVA (share of the variance a random forest attributes to each axis; needs scikit-learn).
  Importances are normalized to sum to 1 per method; the interval is a bootstrap over trials,
  widened where needed to hold the estimate itself: an importance is non-negative and a
  resample repeats trials, which reads as structure, so the resamples' importances are biased
  up and their 2.5-97.5 % range can sit wholly above an estimate of 0 (an axis that does not
  matter). The interval never excludes the value it is printed beside.
* ``salib``: Sobol total-order indices (Saltelli sampling) or Morris mu*, both need a model to
  sample. The model is the measured grid itself: ``log10(objective)`` on the grid of levels,
  interpolated piecewise-linearly in ``log2(size)`` between measured sizes, with categorical
  axes as discrete uniform factors (each level exact, never interpolated). Grid cells without a
  measurement (failed or not run) are filled from the nearest measured cell; the note says how
  many. The interval is SALib's own bootstrap (95 %).

The axes are defined in :mod:`sdpalab.explore.factors`; the SALib model in
:mod:`sdpalab.explore.salib`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from sdpalab.explore.factors import COLUMNS, Axis, axes_of, axis_note, empty_row, row
from sdpalab.explore.objectives import (
    ERROR_FLOOR,
    OBJECTIVES,
    check_memory,
    check_objectives,
    error_field,
    memory_field,
    objective_value,
)
from sdpalab.explore.salib import SEARCH_INSTALL, salib_rows
from sdpalab.measure.result import Result

METHODS = ("optuna", "salib", "both")
__all__ = ["COLUMNS", "METHODS", "axes_of", "sensitivity"]


def sensitivity(
    results: Iterable[Result],
    objectives: Sequence[str] = OBJECTIVES,
    method: str = "both",
    *,
    salib_method: str = "sobol",
    n_boot: int = 10,
    n_samples: int = 1024,
    seed: int = 0,
    memory: str = "auto",
) -> pd.DataFrame:
    """Importance of each varying axis for each objective.

    Returns a DataFrame with columns ``axis, objective, method, importance, ci_low, ci_high,
    note``, sorted by objective, method and importance (largest first). ``method``:
    ``optuna`` (rows for ``ped_anova`` and ``fanova``), ``salib`` (``sobol`` total-order index,
    or ``morris`` mu* with ``salib_method="morris"``), or ``both``. ``objectives`` name
    Result fields (``latency_ms``, ``kv_cache_bytes``, ...) or ``memory`` (the measure
    ``memory`` picks; the table names its field). Only ``ok`` results with the objective
    measured are used; a method that cannot run gives one row with a NaN importance and the
    reason in ``note``. Every interval holds its estimate (module doc).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not valid; choose one of: {', '.join(METHODS)}")
    if salib_method not in ("sobol", "morris"):
        raise ValueError(f"salib_method={salib_method!r} is not valid; choose sobol or morris")
    objectives = check_objectives(objectives)
    memory = check_memory(memory)
    results = [r for r in results if r.ok]
    rows: list[dict[str, Any]] = []
    for objective in objectives:
        pairs = [(r, objective_value(r, objective, memory)) for r in results]
        pairs = [(r, v) for r, v in pairs if v is not None and math.isfinite(v)]
        name = objective
        if objective == "memory":
            fields = {memory_field(r, memory) for r, _ in pairs} or {"memory"}
            name = fields.pop() if len(fields) == 1 else f"memory ({memory})"
        elif objective == "error":  # rel_fro_err, or a model's KL
            fields = {error_field(r) for r, _ in pairs} or {"error"}
            name = fields.pop() if len(fields) == 1 else "error"
        if len(pairs) < 4:
            rows.append(empty_row(name, method, f"{len(pairs)} ok results with {name}; need 4"))
            continue
        used = [r for r, _ in pairs]
        axes, points = axes_of(used)
        y = np.log10(np.maximum([v for _, v in pairs], ERROR_FLOOR))
        if not axes:
            rows.append(empty_row(name, method, "no axis varies among the results"))
            continue
        notes = {a.name: axis_note(a, used, points) for a in axes}
        if method in ("optuna", "both"):
            rows += _optuna_rows(axes, points, y, name, n_boot, seed, notes)
        if method in ("salib", "both"):
            rows += salib_rows(axes, points, y, name, salib_method, n_samples, seed, notes)
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
            rows.append(empty_row(objective, name, f"{name} failed: {type(err).__name__}: {err}"))
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
            f"CI: bootstrap 2.5-97.5 % over {len(boots)} resamples, widened to hold the "
            "estimate"
        )
        for axis in axes:
            estimate = full.get(axis.name, 0.0)
            samples = [b.get(axis.name, 0.0) for b in boots] or [estimate]
            low, high = np.percentile(samples, [2.5, 97.5])
            low, high = min(low, estimate), max(high, estimate)  # see the module doc
            rows.append(
                row(axis.name, objective, name, estimate, low, high, note + axis_notes[axis.name])
            )
    if "fanova" not in evaluators:
        rows.append(
            empty_row(objective, "fanova", "fANOVA needs scikit-learn: pip install scikit-learn")
        )
    return rows


def _importances(optuna, trials, evaluator) -> dict[str, float]:
    study = optuna.create_study(direction="minimize")
    study.add_trials(trials)
    values = np.array([t.value for t in trials])
    if np.ptp(values) == 0:
        return {name: 0.0 for name in trials[0].params}
    with warnings.catch_warnings():  # small resamples: Optuna warns, the note says how many
        warnings.simplefilter("ignore")
        return optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True)
