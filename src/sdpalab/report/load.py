"""Read a run directory back: ``sl.load(DIR)`` → a pandas DataFrame, and the export to files.

A run directory holds ``results.sqlite`` (the store), ``results.csv``, ``run.json`` (config and
provenance) and, after :func:`export`, ``results.parquet``. Rows are :meth:`Result.to_row`:
flat, unit-suffixed columns (``latency_ms``, ``peak_mem_bytes``), workload fields prefixed
``wl_`` and variant fields ``v_`` (dict-valued fields such as ``v_mod_args`` as JSON text).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdpalab.measure.result import Result

if TYPE_CHECKING:
    import pandas as pd

SQLITE, CSV, PARQUET, RUN_JSON = "results.sqlite", "results.csv", "results.parquet", "run.json"


def _run_dir(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {str(path)!r} does not exist")
    return path


def load_results(run_dir: str | Path) -> list[Result]:
    """Every trial's Result in ``run_dir``: from ``results.sqlite`` through the store when it is
    there (provenance and settings included), else rebuilt from ``results.csv``."""
    path = _run_dir(run_dir)
    if (path / SQLITE).exists():
        try:
            from sdpalab.run.store import ResultStore
        except ImportError:
            pass  # the engine is not installed: the CSV below says the same thing
        else:
            with ResultStore(path) as store:
                return store.results()
    if (path / CSV).exists():
        return [from_row(row) for row in records(_read_csv(path / CSV))]
    raise FileNotFoundError(f"{str(path)!r} holds no {SQLITE} or {CSV}: not a run directory")


def load(run_dir: str | Path) -> pd.DataFrame:
    """The run's trials as a DataFrame, one row per trial, columns as :meth:`Result.to_row`."""
    path = _run_dir(run_dir)
    if not (path / SQLITE).exists() and (path / CSV).exists():
        return _read_csv(path / CSV)
    return frame(load_results(path))


def frame(results: Iterable[Result] | pd.DataFrame) -> pd.DataFrame:
    """Results (or an already flat DataFrame, returned as is) as the flat DataFrame."""
    import pandas as pd

    if isinstance(results, pd.DataFrame):
        return results
    return pd.DataFrame([r.to_row() for r in results])


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` (resolved config, provenance, command line) as a dict; ``{}`` if absent."""
    try:
        data = json.loads((Path(run_dir) / RUN_JSON).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def export(
    run_dir: str | Path, results: Iterable[Result] | pd.DataFrame | None = None
) -> list[Path]:
    """Write ``results.parquet`` (and ``results.csv`` when missing) into ``run_dir``.

    Columns are the flat :meth:`Result.to_row` ones. Returns the paths written. Parquet needs
    pyarrow: without it this raises ImportError naming the install command.
    """
    path = _run_dir(run_dir)
    df = load(path) if results is None else frame(results)
    written = []
    if not (path / CSV).exists():
        df.to_csv(path / CSV, index=False)
        written.append(path / CSV)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ImportError(
            "writing results.parquet needs pyarrow: pip install 'sdpalab[parquet]'"
        ) from None
    _parquet_ready(df).to_parquet(path / PARQUET, index=False)
    written.append(path / PARQUET)
    return written


def _parquet_ready(df: pd.DataFrame) -> pd.DataFrame:
    # Parquet wants one type a column: object columns mixing numbers and text become text.
    out = df.copy()
    for name in out.columns:
        if out[name].dtype == object:
            kinds = {type(v) for v in out[name] if not _missing(v)}
            if len(kinds) > 1 and not kinds <= {int, float, bool}:
                out[name] = [None if _missing(v) else str(v) for v in out[name]]
    return out


def _read_csv(path: Path) -> pd.DataFrame:
    import pandas as pd

    return pd.read_csv(path)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def plain(value: Any) -> Any:
    """A DataFrame cell as a plain Python value: NaN → None, numpy scalars → Python, integral
    floats (CSV turns int columns with gaps into floats) → int."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        with contextlib.suppress(ValueError, AttributeError):
            value = value.item()
    if _missing(value):
        return None
    return value


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of ``df`` as dicts of plain Python values (see :func:`plain`)."""
    return [{k: plain(v) for k, v in row.items()} for row in df.to_dict("records")]


def decode_json(value: Any) -> Any:
    """A ``v_*`` cell back to its value: JSON objects (``v_mod_args``) become dicts."""
    if isinstance(value, str) and value.startswith("{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _int_if_integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


_INT_FIELDS = {
    "latency_n",
    "peak_mem_bytes",
    "peak_mem_total_bytes",
    "input_bytes",
    "kv_cache_bytes",
    "kv_cache_bytes_model",
    "step_bytes",
    "flops",
    "bytes_moved",
}


def from_row(row: dict[str, Any]) -> Result:
    """Inverse of :meth:`Result.to_row` (provenance and settings are not in a row)."""
    variant, workload, fields = {}, {}, {}
    for key, value in row.items():
        value = plain(value)
        if key.startswith("wl_"):
            workload[key[3:]] = _int_if_integral(value)
        elif key.startswith("v_"):
            variant[key[2:]] = decode_json(value)
        else:
            fields[key] = _int_if_integral(value) if key in _INT_FIELDS else value
    for key in ("reason", "trial_id", "label"):
        fields[key] = "" if fields.get(key) is None else str(fields[key])
    fields.setdefault("status", "ok")
    return Result.from_dict({"variant": variant, "workload": workload, **fields})
