"""A resolved sweep: :class:`SweepSpec` (frozen, made by :mod:`sdpalab.spec.config` from YAML), its
sub-grids, and their expansion into :class:`Trial` s, the unit the engine runs.

A point no machine could run (``kv_quant`` without a cache, ``seq_q > seq_kv``) is not a
trial: a value of the config that gives no valid point at all is a config error
(:func:`never_valid`, refused when the config loads), and a combination the cross product makes
of values valid elsewhere is left out, with its reason (:meth:`SweepSpec.left_out`). What only
this machine lacks (a dtype the device has no kernels for) is kept as a trial with the reason in
``unsupported``: the engine stores it as an ``unsupported`` Result without running it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sdpalab.measure.result import Result
from sdpalab.spec.settings import Constraints, MeasureSettings
from sdpalab.spec.variant import Variant, phase_refusal
from sdpalab.spec.workload import (
    FIELD_OF_KEY,
    ModelWorkload,
    TraceWorkload,
    Workload,
    workload_kind,
)


def trial_id(variant: Any, workload: Any, extra: dict[str, Any] | None = None) -> str:
    """Stable hash of a trial's full configuration (variant, workload, measurement settings)."""
    blob = json.dumps(
        {"variant": variant.to_dict(), "workload": workload.to_dict(), "extra": extra or {}},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Grid:
    """One sub-grid: resolved axes (each a tuple of values), its settings, zipped axes."""

    name: str
    workload: dict[str, tuple]
    """Axes of the workload; ``mod`` (the mask it means), like the variants', holds pairs."""
    variants: dict[str, tuple]
    """Axes of the Variant; ``mod`` holds ``(name, args)`` pairs with ``mod_args`` folded in."""
    measure: MeasureSettings
    zip: tuple[str, ...] = ()
    only_on: str | None = None

    def to_dict(self) -> dict[str, Any]:
        workload = {k: _config_values(k, v) for k, v in self.workload.items()}
        variants = {k: _config_values(k, v) for k, v in self.variants.items()}
        out = {
            "name": self.name,
            "only_on": self.only_on,
            "zip": list(self.zip) or None,
            "workload": workload,
            "variants": variants,
            "measure": self.measure.to_dict(),
        }
        return {k: v for k, v in out.items() if v is not None}


def _config_values(key: str, values: tuple) -> list:
    """An axis as a config writes it: a ``mod`` axis's ``(name, args)`` pairs as ``name`` or
    ``{name: args}``."""
    if key != "mod":
        return list(values)
    return [{name: args} if args else name for name, args in values]


@dataclass(frozen=True)
class Trial:
    """One point of a sweep. ``unsupported`` holds the reason when this machine cannot run it
    (then ``variant``/``workload`` are ``None`` and the trial becomes a Result without running);
    ``invalid`` when no machine could (such points are left out of :meth:`SweepSpec.trials`)."""

    trial_id: str
    variant_spec: dict[str, Any]
    workload_spec: dict[str, Any]
    settings: MeasureSettings
    variant: Variant | None = None
    workload: Workload | ModelWorkload | TraceWorkload | None = None
    unsupported: str | None = None
    grid: str = ""
    invalid: str | None = None

    @property
    def label(self) -> str:
        return Variant.label(self.variant or SimpleNamespace(**self.variant_spec))

    def result(self, status: str, reason: str, **fields: Any) -> Result:
        """A Result for this trial that did not come from ``measure`` (unsupported, timeout, crash)."""
        return Result(
            variant=dict(self.variant_spec),
            workload=dict(self.workload_spec),
            status=status,
            reason=reason,
            trial_id=self.trial_id,
            label=self.label,
            settings=self.settings.to_dict(),
            **fields,
        )


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: ``trials()`` lists its grid in a stable order."""

    name: str
    device: str
    """Resolved: ``cpu``, ``cuda`` or ``cuda:N``."""
    grids: tuple[Grid, ...]
    measure: MeasureSettings
    constraints: Constraints = dataclasses.field(default_factory=Constraints)
    source: str | None = None
    description: str = ""

    def trials(self) -> list[Trial]:
        """Every trial of every grid that applies to this device, duplicates removed; points no
        machine could run are left out (:meth:`left_out`)."""
        return [t for t in self._points() if t.invalid is None]

    def left_out(self) -> list[Trial]:
        """The cross product's points that no machine could run (their values go together
        nowhere, e.g. ``kv_quant: int8`` with ``kv_cache: none``); ``invalid`` says why."""
        return [t for t in self._points() if t.invalid is not None]

    def _points(self) -> list[Trial]:
        seen: dict[str, Trial] = {}
        kind = self.device.split(":")[0]
        for grid in self.grids:
            if grid.only_on in (None, kind):
                for trial in _expand(grid, self.device):
                    seen.setdefault(trial.trial_id, trial)
        return list(seen.values())

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, JSON-ready; it feeds back into :func:`spec_from_dict`."""
        # what is left at its default is left out, so older run.json files read the same
        default = Constraints().to_dict()
        constraints = {k: v for k, v in self.constraints.to_dict().items() if v != default[k]}
        return {
            "name": self.name,
            "description": self.description,
            "device": self.device,
            "grids": [g.to_dict() for g in self.grids],
            "measure": self.measure.to_dict(),
            "constraints": constraints,
        }


def dump_spec(spec: SweepSpec) -> dict[str, Any]:
    """What ``run.json`` keeps of a spec: the resolved config and the file it came from."""
    return {"config": spec.to_dict(), "source": spec.source}


def never_valid(grid: Grid, device: str) -> tuple[str, Any, str] | None:
    """The first value of ``grid`` that gives no point any machine could run: ``(key path as a
    config writes it, e.g. "variants.kv_quant", the value, the reason)``, or ``None``.

    Such a value is a config error (``mod: sliding_window`` without a window, ``heads_q: 8``
    with ``heads_kv: 3``, ``kv_quant: int8`` without a cache); a combination that fails while
    each of its values works elsewhere in the grid is only left out. Of several such values,
    the one the reason names first is reported.
    """
    valid, reasons, values = set(), {}, {}
    for picked, trial in _points(grid, device):
        for key, value in picked.items():
            ident = (key, json.dumps(value, sort_keys=True, default=str))
            values.setdefault(ident, value)
            if trial.invalid is None:
                valid.add(ident)
            else:
                reasons.setdefault(ident, trial.invalid)
    reasons = {ident: why for ident, why in reasons.items() if ident not in valid}
    if not reasons:
        return None

    def named_at(ident: tuple[str, str]) -> int:
        field = ident[0].split(".", 1)[1]
        at = reasons[ident].find(field)
        return at if at >= 0 else len(reasons[ident])

    ident = min(reasons, key=named_at)  # stable: the first axis among equals
    key, value = ident[0], values[ident]
    section, field = key.split(".", 1)
    if field == "mod":  # the grid holds (name, args) pairs; a config writes the name
        name, args = value
        value = {name: args} if args else name
    return f"{'workload' if section == 'wl' else 'variants'}.{field}", value, reasons[ident]


def _expand(grid: Grid, device: str) -> list[Trial]:
    return [trial for _, trial in _points(grid, device)]


def _points(grid: Grid, device: str) -> list[tuple[dict[str, Any], Trial]]:
    """Each point of the grid: the axis values picked (``wl.<key>``, ``v.<key>``), its Trial."""
    axes = {
        **{f"wl.{k}": v for k, v in grid.workload.items()},
        **{f"v.{k}": v for k, v in grid.variants.items()},
    }
    zipped = [k for k in axes if k.split(".", 1)[1] in grid.zip]
    groups: list[tuple[list[str], list[tuple]]] = []
    for key, values in axes.items():
        if key in zipped:
            if key == zipped[0]:
                groups.append((zipped, list(zip(*(axes[z] for z in zipped), strict=True))))
        else:
            groups.append(([key], [(v,) for v in values]))
    points = []
    for combo in itertools.product(*(values for _, values in groups)):
        picked = {
            k: v
            for (keys, _), vals in zip(groups, combo, strict=True)
            for k, v in zip(keys, vals, strict=True)
        }
        # the grid keeps the config's keys (``layers``), so its dump reads back as the config
        wl = {FIELD_OF_KEY.get(k[3:], k[3:]): v for k, v in picked.items() if k.startswith("wl.")}
        var = {k[2:]: v for k, v in picked.items() if k.startswith("v.")}
        for spec in (wl, var):
            if "mod" in spec:
                spec["mod"], spec["mod_args"] = spec["mod"][0], dict(spec["mod"][1])
        points.append((picked, _trial(var, {**wl, "device": device}, grid.measure, grid.name)))
    return points


def _trial(var: dict, wl: dict, settings: MeasureSettings, grid: str) -> Trial:
    v_spec = _defaults(Variant) | var
    kind = workload_kind(wl)
    w_spec = _defaults(kind) | wl
    if w_spec.get("mod", 0) is None:  # as Workload.to_dict writes a workload naming no mask
        del w_spec["mod"], w_spec["mod_args"]
    identity = settings.identity(w_spec.get("device", ""))
    try:
        variant, workload = Variant(**var), kind(**wl)
        refusal = phase_refusal(variant, workload)
        if refusal:
            raise ValueError(refusal)
    except ValueError as err:
        if kind is TraceWorkload:
            w_spec = _trace_spec(wl, w_spec)
        v_obj, w_obj = (
            SimpleNamespace(to_dict=lambda: v_spec),
            SimpleNamespace(to_dict=lambda: w_spec),
        )
        here = _only_not_here(var, wl, kind)
        return Trial(
            trial_id(v_obj, w_obj, identity),
            v_spec,
            w_spec,
            settings,
            unsupported=str(err) if here else None,
            grid=grid,
            invalid=None if here else str(err),
        )
    return Trial(
        trial_id(variant, workload, identity),
        variant.to_dict(),
        workload.to_dict(),
        settings,
        variant,
        workload,
        grid=grid,
    )


def _defaults(kind: type) -> dict[str, Any]:
    return {
        f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        for f in dataclasses.fields(kind)
    }


def _only_not_here(var: dict, wl: dict, kind: type) -> bool:
    """Whether a point that failed would be valid on another machine: the variant is valid and
    the workload too in float32, so only its dtype is missing here (e.g. bfloat16 on a GPU
    without it)."""
    try:
        variant, workload = Variant(**var), kind(**{**wl, "dtype": "float32"})
    except ValueError:
        return False
    return phase_refusal(variant, workload) is None


def _trace_spec(wl: dict, fallback: dict) -> dict:
    """A trace trial's workload dict with the sizes read from the file, when the workload
    itself is valid (so an unsupported variant's row shows the shape it would have run at)."""
    try:
        return TraceWorkload(**wl).to_dict()
    except ValueError:
        return fallback
