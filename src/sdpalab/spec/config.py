"""Sweep configs: YAML (validated by pydantic at the boundary) → a frozen :class:`SweepSpec`.

A config names the device, the workload axes and the variant axes (a scalar is fixed, a list is
an axis; the cross product is the grid), the measurement settings and optional constraints::

    name: decode-long
    device: auto                 # auto | cpu | cuda | cuda:N
    workload: {phase: decode, batch: [1, 8], seq_kv: [4096, 32768], head_dim: 128, dtype: auto}
    variants: {backend: [flash, flex], kv_cache: static, kv_quant: [none, int8]}
    measure: {warmup: 10, repeats: 50, timeout_s: 120}
    constraints: {max_error: 1.0e-2, max_memory: 8GiB}

The workload may name the attention it means, ``mod`` (with ``mod_args``, or ``{sliding_window:
{window: 256}}``, as a variant's): every variant is then checked against that mask, one that
computes another is an approximation, considered by the search and the recommendation only with
``constraints: {allow_approximate: true}``. Without it, each variant means its own mask.

Several sub-grids go under ``grids:`` (a list); each takes the top-level ``workload``,
``variants`` and ``measure`` as defaults and overrides them key by key. A grid may say
``only_on: cpu|cuda`` and ``zip: [seq_kv, head_dim]`` (those axes move together instead of
being crossed). ``dtype: auto`` is float32 on the CPU and bfloat16 (else float16) on a GPU;
``backend: available`` is every kernel this kind of device has.

A whole model can be the workload instead of one attention call: ``workload: {model:
tiny-llama, prompt_len: [64, 128], new_tokens: 16, batch: 1, dtype: auto}`` (keys
:data:`MODEL_AXES`; ``model`` a built-in name or a local path; ``text`` a UTF-8 file, default
``pydoc_data.topics``). Each trial then prefills ``batch`` windows of the text into the variant's
cache and decodes ``new_tokens`` more through it, scored against the stock model
(:mod:`sdpalab.run.model_trial`); ``constraints: {max_kl: 0.01, max_ppl_increase: 1}`` bound
that quality.

Real tensors can be the workload too: ``workload: {trace: FILE, layers: [0, 5], phase: prefill,
dtype: auto}`` (keys :data:`TRACE_AXES`) measures each variant on the queries, keys and values
that ``sdpalab capture`` recorded from a model, one trial a layer (``layers`` is the axis;
omitted, every layer the traces hold). A trace that does not exist or a layer it lacks is a
config error.

Every value is checked on its own when the file is loaded: a bad one is a ``ValueError`` whose
one-line message reads ``<file>: <key.path>: <what is wrong>; valid: ...``. So is a value that
no point of its grid could ever run with (``mod: sliding_window`` without a window, ``heads_q:
8`` with ``heads_kv: 3``, ``kv_quant: int8`` without a cache). A combination the cross product
makes of values valid elsewhere (``kv_quant: [none, int8]`` by ``kv_cache: [none, static]``) is
left out and listed (``SweepSpec.left_out``); what this machine lacks (a dtype the device has
no kernels for) becomes a trial marked ``unsupported``. A ``mod_args`` axis applies to the plain
mods that take its keys.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
)

from sdpalab.attention.backends import available, backend_names
from sdpalab.attention.kvlayers import canonical_kv_quant, is_layer_map
from sdpalab.attention.mods import MODS, validate_mod
from sdpalab.spec.errors import first_error
from sdpalab.spec.settings import Constraints, MeasureSettings
from sdpalab.spec.sweep import Grid, SweepSpec, never_valid
from sdpalab.spec.trace import read_trace
from sdpalab.spec.variant import KV_ARGS, KV_CACHES, WEIGHT_QUANTS, Variant, check_kv_arg
from sdpalab.spec.workload import (
    BUILTIN_MODELS,
    DTYPES,
    MARKERS,
    PHASES,
    PLACE,
    WORKLOAD_KINDS,
    ModelWorkload,
    TraceWorkload,
    config_keys,
    fields_with,
    resolve_device,
    supported_dtypes,
    workload_kind,
)

__all__ = ["PRESETS_DIR", "list_presets", "load_spec", "parse_bytes", "spec_from_dict"]

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"
MODEL_AXES = fields_with(ModelWorkload, exclude=PLACE)
"""The keys of a model workload (``workload: {model: tiny-llama, ...}``)."""
TRACE_AXES = config_keys(TraceWorkload, exclude=PLACE)
"""The keys of a trace workload (``workload: {trace: FILE, layers: [0, 5], ...}``)."""

# --- value checks (each raises ValueError with "<what is wrong>; valid: ...") ------------------

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


# --- value checks (each raises ValueError with "<what is wrong>; valid: ...") ------------------


def _valid(value: Any, choices) -> Any:
    if value not in choices:
        raise ValueError(f"{value!r} is not valid; valid: {', '.join(choices)}")
    return value


def _positive(value: int) -> int:
    if value <= 0:
        raise ValueError(f"{value!r} must be a positive integer")
    return value


def _nonnegative(value: int) -> int:
    if value < 0:
        raise ValueError(f"{value!r} must be a non-negative integer")
    return value


def _positive_number(value: float) -> float:
    if not value > 0:
        raise ValueError(f"{value!r} must be a positive number")
    return value


def _run_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise ValueError(
            f"{value!r} is not a valid name; valid: letters, digits, '.', '_', '-' "
            "(it names the run directory)"
        )
    return value


def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


def _nonempty(values: list) -> list:
    if not values:
        raise ValueError("empty list; give at least one value")
    return values


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-2`` as a string; accept numbers written that way."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_bytes(value: Any) -> int:
    """``2GiB``, ``512MiB``, ``1.5GB`` or an integer → bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _positive(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
    if isinstance(value, str) and match and match[2].lower() in _UNITS:
        size = int(float(match[1]) * _UNITS[match[2].lower()])
        return _positive(size)
    raise ValueError(
        f"{value!r} is not a size; valid: an integer of bytes or e.g. 512MiB, 2GiB, 8GB"
    )


def _mod_entry(value: Any) -> Any:
    """A mod axis entry: a name, or ``{name: args}`` / ``{name: [args, ...]}``."""
    if isinstance(value, str):
        return _valid(value, tuple(MODS))
    if isinstance(value, dict) and len(value) == 1:
        ((name, args),) = value.items()
        _valid(name, tuple(MODS))
        for one in _as_list(args):
            if not isinstance(one, dict):
                raise ValueError(f"arguments of {name!r} must be a mapping, e.g. {{window: 256}}")
            validate_mod(name, one)
        return value
    raise ValueError(
        "must be a mod name or {name: {arg: value}}; e.g. {sliding_window: {window: 256}}"
    )


def _model_name(value: str) -> str:
    if value in BUILTIN_MODELS or Path(value).expanduser().exists():
        return value
    raise ValueError(
        f"{value!r} is neither a built-in model nor an existing path; valid: "
        f"{', '.join(BUILTIN_MODELS)}, a local model directory or a config.json"
    )


def _trace_file(value: str) -> str:
    read_trace(value)  # exists and is a trace, or a ValueError saying which
    return value


def _text_file(value: str) -> str:
    # read in the trial (models/text.py says what is wrong with a file that exists)
    if not Path(value).expanduser().is_file():
        raise ValueError(
            f"{value!r} is not a file; valid: a UTF-8 text file, or no text key for the "
            "default corpus (pydoc_data.topics)"
        )
    return value


def _kv_args(value: dict) -> dict:
    for key, arg in value.items():
        _valid(key, tuple(KV_ARGS))
        check_kv_arg(key, arg, prefix="")
    return value


# --- the YAML boundary: one pydantic model per spec dataclass, derived from its fields ----------


def _axis(item) -> Any:
    """A list-or-scalar axis whose items pass ``item``; never empty."""
    return Annotated[
        list[item] | None,
        BeforeValidator(lambda v: v if v is None else _as_list(v)),
        AfterValidator(lambda v: v if v is None else _nonempty(v)),
    ]


def _choice(*valid: str) -> Any:
    return Annotated[StrictStr, AfterValidator(lambda v: _valid(v, valid))]


def _choice(*valid: str) -> Any:
    return Annotated[StrictStr, AfterValidator(lambda v: _valid(v, valid))]


def _setting(name: str) -> Any:
    """A MeasureSettings field checked by MeasureSettings itself."""
    return AfterValidator(lambda v: (MeasureSettings(**{name: v}), v)[1])


_PosInt = Annotated[StrictInt, AfterValidator(_positive)]
_PosNumber = Annotated[float, BeforeValidator(_number), AfterValidator(_positive_number)]
_BY_TYPE = {
    "int": StrictInt,
    "float": Annotated[float, BeforeValidator(_number)],
    "bool": StrictBool,
}
_AXIS_ITEMS = {
    # workload fields
    "phase": _choice(*PHASES),
    "dtype": _choice("auto", *DTYPES),
    "model": Annotated[StrictStr, AfterValidator(_model_name)],
    "trace": Annotated[StrictStr, AfterValidator(_trace_file)],
    "text": Annotated[StrictStr, AfterValidator(_text_file)],
    "layers": Annotated[StrictInt, AfterValidator(_nonnegative)],
    # variant fields
    "backend": Annotated[
        StrictStr, AfterValidator(lambda v: _valid(v, ("available", *backend_names())))
    ],
    "mod": Annotated[Any, AfterValidator(_mod_entry)],
    "mod_args": dict[str, Any],
    "kv_cache": _choice(*KV_CACHES),
    "kv_quant": Annotated[StrictStr, AfterValidator(canonical_kv_quant)],
    "kv_args": Annotated[dict[str, Any], AfterValidator(_kv_args)],
    "weight_quant": _choice(*WEIGHT_QUANTS),
    "projections": StrictBool,
}
"""The item type of each axis that is not a positive integer (every workload size is); keys as a
config writes them (:func:`~sdpalab.spec.workload.config_keys`)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _axes_model(name: str, names: tuple[str, ...]) -> type[BaseModel]:
    fields = {n: (_axis(_AXIS_ITEMS.get(n, _PosInt)), None) for n in names}
    return create_model(name, __base__=_Model, **fields)


def _settings_model() -> type[BaseModel]:
    fields = {
        f.name: (Annotated[_BY_TYPE[f.type], _setting(f.name)] | None, None)
        for f in dataclasses.fields(MeasureSettings)
    }
    return create_model("MeasureModel", __base__=_Model, **fields)


WORKLOAD_KEYS = tuple(
    dict.fromkeys(k for kind in WORKLOAD_KINDS for k in config_keys(kind, exclude=PLACE))
)
VARIANT_KEYS = tuple(f.name for f in dataclasses.fields(Variant))
WorkloadAxes = _axes_model("WorkloadAxes", WORKLOAD_KEYS)
VariantAxes = _axes_model("VariantAxes", VARIANT_KEYS)
MeasureModel = _settings_model()
_CONSTRAINT_ITEMS = {
    "max_memory": Annotated[Any, AfterValidator(parse_bytes)],
    "allow_approximate": StrictBool,
}
"""The type of each constraint that is not a positive number."""
ConstraintsModel = create_model(
    "ConstraintsModel",
    __base__=_Model,
    **{
        f.name: (_CONSTRAINT_ITEMS.get(f.name, _PosNumber) | None, None)
        for f in dataclasses.fields(Constraints)
    },
)
_Zip = Annotated[
    list[_choice(*(k for k in (*WORKLOAD_KEYS, *VARIANT_KEYS) if k != "mod_args"))],
    AfterValidator(_nonempty),
]


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


def _check_layer_maps(where: str, workload: dict[str, list], variants: dict[str, list]) -> None:
    """A per-layer ``kv_quant`` needs a model: any other workload is one attention call, one
    layer, so such a trial could never run."""
    if "model" in workload:
        return
    for i, kv_quant in enumerate(variants.get("kv_quant", [])):
        if is_layer_map(kv_quant):
            raise ValueError(
                f"{where}.kv_quant[{i}]: {kv_quant!r} is a per-layer map, which needs a model "
                "workload (workload.model); this workload is one attention call: give one format"
            )


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
        where = f"{source}: {path + '.' if path else ''}workload"
        _check_workload_kind(where, workload)
        if "trace" in workload and "layers" not in workload:
            workload["layers"] = _common_layers(where, workload["trace"])
        variants = _merge(model.variants, grid.variants)
        for section, given in (("workload", workload), ("variants", variants)):
            own = getattr(grid, section) is not None and getattr(grid, section).mod_args
            _check_mod_args(f"{source}: {path + '.' if own else ''}{section}", given)
        own = grid.variants is not None and grid.variants.kv_quant is not None
        _check_layer_maps(f"{source}: {path + '.' if own else ''}variants", workload, variants)
        axes_w = _workload_axes(workload, device)
        axes_v = _variant_axes(variants, device)
        zipped = tuple(grid.zip or ())
        lengths = {k: len(axes_w.get(k, axes_v.get(k, ()))) for k in zipped}
        if zipped and (len(set(lengths.values())) > 1 or 0 in lengths.values()):
            raise ValueError(
                f"{source}: {path + '.' if path else ''}zip: axes zipped together need "
                f"lists of one length, given; got lengths {lengths}"
            )
        made = Grid(
            grid.name or (f"grid{i}" if model.grids else model.name),
            axes_w,
            axes_v,
            _settings(base_settings, grid.measure),
            zipped,
            grid.only_on,
        )
        if grid.only_on in (None, device.split(":")[0]):
            _refuse_never_valid(source, path, grid, made, device)
        grids.append(made)
    given = model.constraints.model_dump(exclude_none=True) if model.constraints else {}
    constraints = Constraints(**given)
    return SweepSpec(
        model.name, device, tuple(grids), base_settings, constraints, source, model.description
    )


def _check_workload_kind(where: str, workload: dict[str, list]) -> None:
    """A model or trace workload takes only its own kind's keys; an attention one none that
    only another kind has. A trace's layers must each be in every trace of the axis."""
    kind = workload_kind(workload)
    own = config_keys(kind, exclude=PLACE)
    bad = [k for k in workload if k not in own]
    if bad and kind in MARKERS:
        raise ValueError(
            f"{where}.{bad[0]}: not a key of a {MARKERS[kind]} workload; valid: {', '.join(own)}"
        )
    if bad:
        needs = next(k for k in MARKERS if bad[0] in config_keys(k))
        raise ValueError(
            f"{where}.{bad[0]}: needs workload.{MARKERS[needs]} (a {MARKERS[needs]} workload)"
        )
    for trace in workload.get("trace", []):
        held = read_trace(trace).layers
        for layer in workload.get("layers", []):
            if layer not in held:
                raise ValueError(
                    f"{where}.layers: layer {layer} is not in trace {trace!r}; valid: "
                    + ", ".join(map(str, held))
                )


def _common_layers(where: str, traces: list[str]) -> list[int]:
    """The layers every trace of the axis holds (what an omitted ``layers`` means)."""
    layers = list(read_trace(traces[0]).layers)
    for trace in traces[1:]:
        layers = [layer for layer in layers if layer in read_trace(trace).layers]
    if not layers:
        raise ValueError(f"{where}.trace: the traces share no layer; give workload.layers")
    return layers


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


def _refuse_never_valid(source: str, path: str, grid: GridModel, made: Grid, device: str) -> None:
    """A value with which no point of the grid could run anywhere is a config error, named by
    the key that gave it (the grid's own, else the top level's)."""
    found = never_valid(made, device)
    if found is None:
        return
    key, value, reason = found
    section, field = key.split(".", 1)
    given = getattr(grid, section)
    own = given is not None and getattr(given, field, None) is not None
    where = f"{path}.{key}" if path and own else key
    raise ValueError(f"{source}: {where}: {value!r} makes no valid trial: {reason}")


def _workload_axes(workload: dict[str, list], device: str) -> dict[str, tuple]:
    axes = {
        k: tuple(_resolve_value(k, v, device) for v in vs)
        for k, vs in workload.items()
        if k not in ("mod", "mod_args")
    }
    return axes | _mod_axis(workload)


def _variant_axes(variants: dict[str, list], device: str) -> dict[str, tuple]:
    axes: dict[str, tuple] = {}
    for key, values in variants.items():
        if key == "backend":
            expanded = [
                b
                for v in values
                for b in (available(device.split(":")[0]) if v == "available" else (v,))
            ]
            axes[key] = tuple(expanded)
        elif key not in ("mod", "mod_args"):
            axes[key] = tuple(values)
    return axes | _mod_axis(variants)


def _mod_axis(section: dict[str, list]) -> dict[str, tuple]:
    """A section's (the workload's or the variants') ``mod`` and ``mod_args`` keys as one
    ``mod`` axis of ``(name, args)`` pairs; ``{}`` when it has neither."""
    if "mod" not in section:
        args = section.get("mod_args")
        return {} if args is None else {"mod": tuple(("none", a) for a in args)}
    pairs = []
    for entry in section["mod"]:
        if isinstance(entry, str):
            # mod_args go to the mods that take their keys; a mod taking none of them runs
            # with its defaults (or is refused if it has none)
            params = set(MODS[entry].params)
            fits = [a for a in section.get("mod_args", [{}]) if set(a) <= params]
            pairs += [(entry, args) for args in fits or [{}]]
        else:
            ((name, args),) = entry.items()
            pairs += [(name, one) for one in _as_list(args)]
    return {"mod": tuple(pairs)}
