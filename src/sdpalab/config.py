"""Sweep configs: YAML (validated by pydantic at the boundary) → a frozen :class:`SweepSpec`.

A config names the device, the workload axes and the variant axes (a scalar is fixed, a list is
an axis; the cross product is the grid), the measurement settings and optional constraints::

    name: decode-long
    device: auto                 # auto | cpu | cuda | cuda:N
    workload: {phase: decode, batch: [1, 8], seq_kv: [4096, 32768], head_dim: 128, dtype: auto}
    variants: {backend: [flash, flex], kv_cache: static, kv_quant: [none, int8]}
    measure: {warmup: 10, repeats: 50, timeout_s: 120}
    constraints: {max_error: 1.0e-2, max_memory: 8GiB}

Several sub-grids go under ``grids:`` (a list); each takes the top-level ``workload``,
``variants`` and ``measure`` as defaults and overrides them key by key. A grid may say
``only_on: cpu|cuda`` and ``zip: [seq_kv, head_dim]`` (those axes move together instead of
being crossed). ``dtype: auto`` is float32 on the CPU and bfloat16 (else float16) on a GPU;
``backend: available`` is every kernel this kind of device has.

A whole model can be the workload instead of one attention call: ``workload: {model:
tiny-llama, prompt_len: [64, 128], new_tokens: 16, batch: 1, dtype: auto}`` (keys
:data:`MODEL_AXES`; ``model`` a built-in name or a local path). Each trial then runs the model's
prefill and greedy generation with the variant (:mod:`sdpalab.measure.model_trial`).

Every value is checked on its own when the file is loaded: a bad one is a ``ValueError`` whose
one-line message reads ``<file>: <key.path>: <what is wrong>; valid: ...``. Values that are
each valid but cannot go together (``kv_quant: int8`` without a cache, ``seq_q > seq_kv``, a
dtype the device lacks) become trials marked ``unsupported`` with the reason; nothing is
silently dropped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from sdpalab.config_errors import first_error
from sdpalab.config_fields import (
    MODEL_AXES,
    _ArgsList,
    _as_list,
    _Backends,
    _Bools,
    _choice,
    _DTypes,
    _KVArgsList,
    _KVCaches,
    _KVQuants,
    _Models,
    _Mods,
    _nonempty,
    _nonnegative,
    _Phases,
    _PosInt,
    _PosInts,
    _PosNumber,
    _run_name,
    _WQuants,
    _Zip,
    parse_bytes,
)
from sdpalab.measure.result import MeasureSettings
from sdpalab.spec import (
    resolve_device,
    supported_dtypes,
)
from sdpalab.trials import Constraints, Grid, SweepSpec, Trial, dump_spec

__all__ = [
    "Constraints",
    "Grid",
    "SweepSpec",
    "Trial",
    "dump_spec",
    "list_presets",
    "load_spec",
    "parse_bytes",
    "spec_from_dict",
]

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
AVAILABLE_BACKENDS = {
    "cpu": ("math", "flash", "eager", "flex"),
    "cuda": ("math", "flash", "efficient", "cudnn", "flex", "eager"),
}
"""What ``backend: available`` expands to per device type; a kernel that refuses a particular
shape or dtype at run time is recorded as ``unsupported``."""
# --- the YAML boundary --------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class WorkloadAxes(_Model):
    phase: _Phases = None
    batch: _PosInts = None
    heads_q: _PosInts = None
    heads_kv: _PosInts = None
    seq_q: _PosInts = None
    seq_kv: _PosInts = None
    head_dim: _PosInts = None
    dtype: _DTypes = None
    model: _Models = None
    prompt_len: _PosInts = None
    new_tokens: _PosInts = None


class VariantAxes(_Model):
    backend: _Backends = None
    mod: _Mods = None
    mod_args: _ArgsList = None
    kv_cache: _KVCaches = None
    kv_quant: _KVQuants = None
    kv_args: _KVArgsList = None
    weight_quant: _WQuants = None
    projections: _Bools = None


class MeasureModel(_Model):
    """Mirrors :class:`MeasureSettings` (a test keeps the two in step)."""

    warmup: Annotated[StrictInt, AfterValidator(_nonnegative)] | None = None
    repeats: _PosInt | None = None
    timeout_s: _PosNumber | None = None
    flush_l2: StrictBool | None = None
    cuda_graph: StrictBool | None = None
    check_accuracy: StrictBool | None = None
    memory: StrictBool | None = None
    seed: StrictInt | None = None


class ConstraintsModel(_Model):
    max_error: _PosNumber | None = None
    max_memory: Annotated[Any, AfterValidator(parse_bytes)] | None = None
    max_latency_ms: _PosNumber | None = None


class GridModel(_Model):
    name: StrictStr | None = None
    only_on: _choice("cpu", "cuda") | None = None
    zip: _Zip | None = None
    workload: WorkloadAxes | None = None
    variants: VariantAxes | None = None
    measure: MeasureModel | None = None


class ConfigModel(_Model):
    name: Annotated[StrictStr, AfterValidator(_run_name)]
    description: StrictStr = ""
    device: StrictStr = "auto"
    workload: WorkloadAxes | None = None
    variants: VariantAxes | None = None
    grids: Annotated[list[GridModel], AfterValidator(_nonempty)] | None = None
    measure: MeasureModel | None = None
    constraints: ConstraintsModel | None = None


def _check_mod_args(where: str, variants: dict[str, list]) -> None:
    """Each ``mod_args`` must suit at least one plain mod of the axis (else it is a typo)."""
    from sdpalab.attention.mods import validate_mod

    mods = [m for m in variants.get("mod", ["none"]) if isinstance(m, str)]
    for i, args in enumerate(variants.get("mod_args", []) if mods else []):
        errors = []
        for mod in mods:
            try:
                validate_mod(mod, args)
                break
            except ValueError as err:
                errors.append(str(err))
        else:
            raise ValueError(f"{where}.mod_args[{i}]: {errors[0]}")


# --- loading ------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _no_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def list_presets() -> list[tuple[str, str]]:
    """``(name, description)`` of each shipped preset, by name."""
    out = []
    for path in sorted(PRESETS_DIR.glob("*.yaml"), key=lambda p: p.stem):
        data = yaml.safe_load(path.read_text()) or {}
        lines = str(data.get("description", "")).strip().splitlines()
        out.append((path.stem, lines[0] if lines else ""))
    return out


def _locate(source: str | Path) -> Path:
    path = Path(source)
    if path.is_file():
        return path
    preset = PRESETS_DIR / f"{source}.yaml"
    if isinstance(source, str) and "/" not in source and preset.is_file():
        return preset
    names = ", ".join(name for name, _ in list_presets())
    raise ValueError(f"{source}: no such file or preset; presets: {names}")


def load_spec(source: str | Path) -> SweepSpec:
    """Load a sweep config from a YAML path or a preset name (``quick``, ``demo``, ...)."""
    path = _locate(source)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ValueError(
            f"{path}: {where}YAML syntax error: {err.problem or err.context}"
        ) from None
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
        raise ValueError(f"{path}: cannot read: {err}".replace("\n", " ")) from None
    return spec_from_dict(data, source=str(path))


def spec_from_dict(data: Any, source: str = "<config>") -> SweepSpec:
    """Validate a config mapping (a parsed YAML document) into a :class:`SweepSpec`."""
    if not isinstance(data, dict):
        keys = ", ".join(ConfigModel.model_fields)
        raise ValueError(f"{source}: the top level must be a mapping; valid keys: {keys}")
    try:
        model = ConfigModel.model_validate(data)
    except ValidationError as err:
        raise ValueError(f"{source}: {first_error(err, data, ConfigModel)}") from None
    try:
        device = resolve_device(model.device)
    except ValueError as err:
        raise ValueError(f"{source}: device: {err}") from None
    return _resolve(model, device, source)


def _resolve(model: ConfigModel, device: str, source: str) -> SweepSpec:
    base_settings = _settings(MeasureSettings(), model.measure)
    grids = []
    for i, grid in enumerate(model.grids or [GridModel()]):
        path = f"grids[{i}]" if model.grids else ""
        workload = _merge(model.workload, grid.workload)
        _check_workload_kind(f"{source}: {path + '.' if path else ''}workload", workload)
        variants = _merge(model.variants, grid.variants)
        own = grid.variants is not None and grid.variants.mod_args is not None
        _check_mod_args(f"{source}: {path}.variants" if own else f"{source}: variants", variants)
        axes_w = {k: tuple(_resolve_value(k, v, device) for v in vs) for k, vs in workload.items()}
        axes_v = _variant_axes(variants, device)
        zipped = tuple(grid.zip or ())
        lengths = {k: len(axes_w.get(k, axes_v.get(k, ()))) for k in zipped}
        if zipped and (len(set(lengths.values())) > 1 or 0 in lengths.values()):
            raise ValueError(
                f"{source}: {path + '.' if path else ''}zip: axes zipped together need "
                f"lists of one length, given; got lengths {lengths}"
            )
        grids.append(
            Grid(
                grid.name or (f"grid{i}" if model.grids else model.name),
                axes_w,
                axes_v,
                _settings(base_settings, grid.measure),
                zipped,
                grid.only_on,
            )
        )
    constraints = Constraints(**(model.constraints.model_dump() if model.constraints else {}))
    return SweepSpec(
        model.name, device, tuple(grids), base_settings, constraints, source, model.description
    )


def _check_workload_kind(where: str, workload: dict[str, list]) -> None:
    """A model workload takes only :data:`MODEL_AXES`; an attention one none of the model's."""
    if "model" in workload:
        bad = [k for k in workload if k not in MODEL_AXES]
        valid = ", ".join(MODEL_AXES)
        if bad:
            raise ValueError(f"{where}.{bad[0]}: not a key of a model workload; valid: {valid}")
    else:
        bad = [k for k in workload if k in ("prompt_len", "new_tokens")]
        if bad:
            raise ValueError(f"{where}.{bad[0]}: needs workload.model (a model workload)")


def _merge(base: BaseModel | None, over: BaseModel | None) -> dict[str, list]:
    merged = base.model_dump(exclude_none=True) if base else {}
    merged.update(over.model_dump(exclude_none=True) if over else {})
    return merged


def _settings(base: MeasureSettings, model: MeasureModel | None) -> MeasureSettings:
    return dataclasses.replace(base, **(model.model_dump(exclude_none=True) if model else {}))


def _resolve_value(key: str, value: Any, device: str) -> Any:
    if key == "dtype" and value == "auto":
        if not device.startswith("cuda"):
            return "float32"
        return "bfloat16" if "bfloat16" in supported_dtypes(device) else "float16"
    return value


def _variant_axes(variants: dict[str, list], device: str) -> dict[str, tuple]:
    axes: dict[str, tuple] = {}
    for key, values in variants.items():
        if key == "backend":
            expanded = [
                b
                for v in values
                for b in (AVAILABLE_BACKENDS[device.split(":")[0]] if v == "available" else (v,))
            ]
            axes[key] = tuple(expanded)
        elif key == "mod":
            pairs = []
            for entry in values:
                if isinstance(entry, str):
                    pairs += [(entry, args) for args in variants.get("mod_args", [{}])]
                else:
                    ((name, args),) = entry.items()
                    pairs += [(name, one) for one in _as_list(args)]
            axes[key] = tuple(pairs)
        elif key != "mod_args":
            axes[key] = tuple(values)
    if "mod_args" in variants and "mod" not in variants:
        axes["mod"] = tuple(("none", args) for args in variants["mod_args"])
    return axes
