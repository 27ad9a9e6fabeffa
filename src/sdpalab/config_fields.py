"""The field types of a sweep config: value checks and pydantic-annotated axis types.

Each check raises ``ValueError`` with "<what is wrong>; valid: ..."; :mod:`sdpalab.config`
builds the YAML models from these types and turns the first error into one line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, StrictBool, StrictInt, StrictStr

from sdpalab.spec import (
    DTYPES,
    KV_ARGS,
    KV_CACHES,
    KV_QUANTS,
    PHASES,
    WEIGHT_QUANTS,
    known_backends,
)

WORKLOAD_AXES = ("phase", "batch", "heads_q", "heads_kv", "seq_q", "seq_kv", "head_dim", "dtype")
MODEL_AXES = ("model", "prompt_len", "new_tokens", "batch", "dtype")
"""The keys of a model workload (``workload: {model: tiny-llama, ...}``): a trial runs the model
end to end (see :mod:`sdpalab.measure.model_trial`) instead of one attention call."""
VARIANT_AXES = (
    "backend",
    "mod",
    "mod_args",
    "kv_cache",
    "kv_quant",
    "kv_args",
    "weight_quant",
    "projections",
)
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
    from sdpalab.attention.mods import MODS, validate_mod

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
    from sdpalab.integrations.models import BUILTINS

    if value in BUILTINS or Path(value).expanduser().exists():
        return value
    raise ValueError(
        f"{value!r} is neither a built-in model nor an existing path; valid: "
        f"{', '.join(BUILTINS)}, a local model directory or a config.json"
    )


def _kv_args(value: dict) -> dict:
    for key, arg in value.items():
        _valid(key, tuple(KV_ARGS))
        if isinstance(arg, bool) or not isinstance(arg, int) or arg <= 0:
            raise ValueError(f"{key}={arg!r} must be a positive integer")
    return value


def _axis(item) -> Any:
    """A list-or-scalar axis whose items pass ``item``; never empty."""
    return Annotated[
        list[item] | None,
        BeforeValidator(lambda v: v if v is None else _as_list(v)),
        AfterValidator(lambda v: v if v is None else _nonempty(v)),
    ]


def _choice(*valid: str) -> Any:
    return Annotated[StrictStr, AfterValidator(lambda v: _valid(v, valid))]


_PosInt = Annotated[StrictInt, AfterValidator(_positive)]
_PosNumber = Annotated[float, BeforeValidator(_number), AfterValidator(_positive_number)]
_PosInts = _axis(_PosInt)
_Phases = _axis(_choice(*PHASES))
_Models = _axis(Annotated[StrictStr, AfterValidator(_model_name)])
_DTypes = _axis(_choice("auto", *DTYPES))
_Backends = _axis(
    Annotated[StrictStr, AfterValidator(lambda v: _valid(v, ("available", *known_backends())))]
)
_Mods = _axis(Annotated[Any, AfterValidator(_mod_entry)])
_ArgsList = _axis(dict[str, Any])
_KVArgsList = _axis(Annotated[dict[str, Any], AfterValidator(_kv_args)])
_KVCaches = _axis(_choice(*KV_CACHES))
_KVQuants = _axis(_choice(*KV_QUANTS))
_WQuants = _axis(_choice(*WEIGHT_QUANTS))
_Bools = _axis(StrictBool)
_ZIPPABLE = tuple(
    k for k in dict.fromkeys((*WORKLOAD_AXES, *MODEL_AXES, *VARIANT_AXES)) if k != "mod_args"
)
_Zip = Annotated[list[_choice(*_ZIPPABLE)], AfterValidator(_nonempty)]
