"""One line for a config's first validation error: ``key.path: what is wrong; valid: ...``.

pydantic reports locations as tuples with union tags in them; these helpers walk the user's
own input alongside, so the path printed is the one they wrote (``grids[1].variants.backend[0]``).
"""

from __future__ import annotations

import re
from typing import Any, get_args

from pydantic import BaseModel, ValidationError


def first_error(err: ValidationError, data: Any, root: type[BaseModel]) -> str:
    """One line for the first pydantic error: ``key.path: what is wrong; valid: ...``."""
    errors = err.errors()
    first = errors[0]
    loc, msg, kind = first["loc"], first["msg"], first["type"]
    if kind == "value_error":
        msg = str(first.get("ctx", {}).get("error", msg))
    elif kind == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        valid = ", ".join(model.model_fields) if model else "see the documentation"
        msg = f"unknown key; valid: {valid}"
    elif kind == "missing":
        msg = "required key is missing"
    else:
        shown = repr(first.get("input"))
        msg = f"{msg.lower()}, got {shown[:60]}"
    return _one_line(f"{_path(loc, data) or '(top level)'}: {msg}", len(errors))


def _one_line(text: str, count: int) -> str:
    more = f" (and {count - 1} more problem{'s' if count > 2 else ''})" if count > 1 else ""
    return " ".join(text.split()) + more


def _path(loc: tuple, data: Any) -> str:
    """``grids[1].variants.backend[0]`` from a pydantic ``loc``, walking the input alongside:
    pydantic's union tags are skipped, and a scalar given for an axis gets no ``[0]``."""
    out, node = "", data
    for part in loc:
        if isinstance(part, int):
            if isinstance(node, list):
                out += f"[{part}]"
                node = node[part] if part < len(node) else None
        elif isinstance(node, dict) and (part in node or re.fullmatch(r"\w+", part)):
            out += f".{part}" if out else part  # present, or a key that is missing
            node = node.get(part)
    return out


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _find_model(field.annotation)
        if model is None:
            return None
    return model


def _find_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in get_args(tp):
        found = _find_model(arg)
        if found:
            return found
    return None
