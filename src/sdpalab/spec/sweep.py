"""A resolved sweep: :class:`SweepSpec` (frozen, made by :mod:`sdpalab.spec.config` from YAML), its
sub-grids, and their expansion into :class:`Trial` s, the unit the engine runs.

A trial whose values are each valid but cannot go together (``kv_quant`` without a cache,
``seq_q > seq_kv``, a dtype the device lacks) is kept, with the reason in ``unsupported``: the
engine stores it as an ``unsupported`` Result without running it.
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
from sdpalab.spec.variant import Variant
from sdpalab.spec.workload import ModelWorkload, Workload, is_model_workload


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
    variants: dict[str, tuple]
    """Axes of the Variant; ``mod`` holds ``(name, args)`` pairs with ``mod_args`` folded in."""
    measure: MeasureSettings
    zip: tuple[str, ...] = ()
    only_on: str | None = None

    def to_dict(self) -> dict[str, Any]:
        variants = {k: list(v) for k, v in self.variants.items() if k != "mod"}
        if "mod" in self.variants:
            variants["mod"] = [
                name if not args else {name: args} for name, args in self.variants["mod"]
            ]
        out = {
            "name": self.name,
            "only_on": self.only_on,
            "zip": list(self.zip) or None,
            "workload": {k: list(v) for k, v in self.workload.items()},
            "variants": variants,
            "measure": self.measure.to_dict(),
        }
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class Trial:
    """One point of a sweep. ``unsupported`` holds the reason when its values cannot go together
    (then ``variant``/``workload`` are ``None`` and the trial becomes a Result without running)."""

    trial_id: str
    variant_spec: dict[str, Any]
    workload_spec: dict[str, Any]
    settings: MeasureSettings
    variant: Variant | None = None
    workload: Workload | ModelWorkload | None = None
    unsupported: str | None = None
    grid: str = ""

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
        """Every trial of every grid that applies to this device, duplicates removed."""
        seen: dict[str, Trial] = {}
        kind = self.device.split(":")[0]
        for grid in self.grids:
            if grid.only_on in (None, kind):
                for trial in _expand(grid, self.device):
                    seen.setdefault(trial.trial_id, trial)
        return list(seen.values())

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, JSON-ready; it feeds back into :func:`spec_from_dict`."""
        constraints = {k: v for k, v in self.constraints.to_dict().items() if v is not None}
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


def _expand(grid: Grid, device: str) -> list[Trial]:
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
    trials = []
    for combo in itertools.product(*(values for _, values in groups)):
        picked = {
            k: v
            for (keys, _), vals in zip(groups, combo, strict=True)
            for k, v in zip(keys, vals, strict=True)
        }
        wl = {k[3:]: v for k, v in picked.items() if k.startswith("wl.")}
        var = {k[2:]: v for k, v in picked.items() if k.startswith("v.")}
        if "mod" in var:
            var["mod"], var["mod_args"] = var["mod"][0], dict(var["mod"][1])
        trials.append(_trial(var, {**wl, "device": device}, grid.measure, grid.name))
    return trials


def _trial(var: dict, wl: dict, settings: MeasureSettings, grid: str) -> Trial:
    v_spec = {
        f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        for f in dataclasses.fields(Variant)
    } | var
    kind = ModelWorkload if is_model_workload(wl) else Workload
    w_spec = {f.name: f.default for f in dataclasses.fields(kind)} | wl
    identity = settings.identity(w_spec.get("device", ""))
    try:
        variant, workload = Variant(**var), kind(**wl)
    except ValueError as err:
        v_obj, w_obj = (
            SimpleNamespace(to_dict=lambda: v_spec),
            SimpleNamespace(to_dict=lambda: w_spec),
        )
        return Trial(
            trial_id(v_obj, w_obj, identity),
            v_spec,
            w_spec,
            settings,
            unsupported=str(err),
            grid=grid,
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
