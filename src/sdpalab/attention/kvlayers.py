"""Per-layer KV formats: a ``kv_quant`` that differs by decoder layer, written as one string.

    "int8@0-1,kivi2"            layers 0 and 1 int8, every other layer kivi2
    "none@0,int8@1-3,int4@29,kivi4"

Entries ``FORMAT@FIRST-LAST`` (or ``FORMAT@LAYER``; layers count from 0, both ends included)
name the layers that differ, comma-separated in any order; exactly one bare ``FORMAT`` names
the format of every other layer, so a map never leaves a layer without one, whatever the model's
depth. A plain format (``int8``) is the uniform case. Formats are :data:`KV_QUANTS`.

Why a string on the ``kv_quant`` axis rather than a mapping in a field of its own: which format a
layer stores is one fact with one home, and the value stays a scalar, so YAML lists of maps,
``Variant.key()``, labels, the results table's ``kv_quant`` column, grouping in reports and the
search's categorical choices all take a map unchanged. :func:`canonical_kv_quant` writes each
map one way (runs sorted and merged, runs equal to the rest dropped, no spaces), so two
spellings of one map are one variant.
"""

from __future__ import annotations

import itertools
import re

from sdpalab.attention.kvquant import FORMATS

KV_QUANTS = ("none", *FORMATS)
"""The storage formats of one layer's cache (``none``: the compute dtype as is)."""
EXAMPLE = "int8@0-1,kivi2"

_LAYERS = re.compile(r"(\d+)(?:-(\d+))?")

Run = tuple[int, int, str]
"""``(first, last, format)``: layers ``first..last`` (inclusive) store ``format``."""


def _valid_formats() -> str:
    return ", ".join(KV_QUANTS)


def _parse(kv_quant: str) -> tuple[list[Run], str]:
    """(runs sorted by first layer, the format of every other layer); ValueError names the
    whole value and what is wrong in it."""
    if not isinstance(kv_quant, str):
        raise ValueError(f"{kv_quant!r} is not valid; choose one of: {_valid_formats()} (a string)")
    if "@" not in kv_quant and "," not in kv_quant:
        if kv_quant.strip() in KV_QUANTS:
            return [], kv_quant.strip()
        raise ValueError(
            f"{kv_quant!r} is not valid; choose one of: {_valid_formats()}, or a per-layer map "
            f"such as {EXAMPLE!r}"
        )
    runs, rest = [], []
    for entry in kv_quant.split(","):
        fmt, at, layers = (part.strip() for part in entry.partition("@"))
        if fmt not in KV_QUANTS:
            raise ValueError(
                f"{kv_quant!r}: {fmt!r} is not a format; choose one of: {_valid_formats()} "
                f"(a per-layer map reads {EXAMPLE!r})"
            )
        if not at:
            rest.append(fmt)
            continue
        match = _LAYERS.fullmatch(layers.replace(" ", ""))
        first = int(match[1]) if match else -1
        last = int(match[2] or match[1]) if match else -1
        if first < 0 or last < first:
            raise ValueError(
                f"{kv_quant!r}: {fmt}@{layers} is not valid; write FORMAT@LAYER or "
                "FORMAT@FIRST-LAST with 0 <= FIRST <= LAST"
            )
        runs.append((first, last, fmt))
    if len(rest) != 1:
        said = f"{len(rest)} ({', '.join(rest)})" if rest else "none"
        raise ValueError(
            f"{kv_quant!r}: a per-layer map needs exactly one bare format for every other layer; "
            f"it has {said}; e.g. {EXAMPLE!r}"
        )
    runs.sort()
    for (_, last, fmt), (first, _, other) in itertools.pairwise(runs):
        if first <= last:
            raise ValueError(
                f"{kv_quant!r}: layer {first} is given twice ({fmt} and {other}); "
                "give each layer one format"
            )
    return runs, rest[0]


def _merge(runs: list[Run], rest: str) -> list[Run]:
    """Runs equal to ``rest`` dropped, touching runs of one format joined."""
    out: list[Run] = []
    for first, last, fmt in runs:
        if fmt == rest:
            continue
        if out and out[-1][2] == fmt and out[-1][1] + 1 == first:
            out[-1] = (out[-1][0], last, fmt)
        else:
            out.append((first, last, fmt))
    return out


def canonical_kv_quant(kv_quant: str) -> str:
    """``kv_quant`` written the one way: a plain format as is, a map with its runs sorted and
    merged and the rest last (``" kivi2, int8@1, int8@0"`` → ``"int8@0-1,kivi2"``); a map whose
    runs all equal the rest is that plain format. Raises ``ValueError`` naming the value, what
    is wrong and what is valid."""
    runs, rest = _parse(kv_quant)
    entries = [
        f"{fmt}@{first}" + (f"-{last}" if last > first else "")
        for first, last, fmt in _merge(runs, rest)
    ]
    return ",".join([*entries, rest])


def is_layer_map(kv_quant: str) -> bool:
    """Whether ``kv_quant`` (canonical) gives layers different formats."""
    return "@" in kv_quant


def kv_formats(kv_quant: str) -> tuple[str, ...]:
    """The distinct formats ``kv_quant`` uses, first-named first (the rest last)."""
    runs, rest = _parse(kv_quant)
    return tuple(dict.fromkeys([*(fmt for _, _, fmt in _merge(runs, rest)), rest]))


def layer_formats(kv_quant: str, layers: int) -> tuple[str, ...]:
    """The format of each of ``layers`` layers, layer 0 first.

    Raises ``ValueError`` when the map names a layer the model does not have (a typo in a
    range would otherwise change nothing, silently).
    """
    if isinstance(layers, bool) or not isinstance(layers, int) or layers <= 0:
        raise ValueError(f"layers={layers!r} must be a positive integer")
    runs, rest = _parse(kv_quant)
    out = [rest] * layers
    for first, last, fmt in runs:
        if last >= layers:
            raise ValueError(
                f"kv_quant={kv_quant!r} names layer {last}; the model has {layers} layers "
                f"(0-{layers - 1})"
            )
        out[first : last + 1] = [fmt] * (last - first + 1)
    return tuple(out)


def format_of_layer(kv_quant: str, layer: int) -> str:
    """The format of layer ``layer`` (counting from 0) under ``kv_quant``."""
    runs, rest = _parse(kv_quant)
    return next((fmt for first, last, fmt in runs if first <= layer <= last), rest)
