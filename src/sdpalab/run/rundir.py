"""A run directory: the only reader and writer of its ``results.sqlite``, ``results.csv``,
``results.parquet`` and ``run.json``.

``results.sqlite`` (table ``trials``) is the store: one row per trial, keyed by ``trial_id`` (the
stable hash of the trial's config), with ``status``, ``label``, ``result_json`` (the whole
:class:`Result`, provenance included), ``written_utc`` and the flat unit-suffixed columns of
:meth:`Result.to_row` (``latency_ms``, ``wl_seq_kv``, ``v_backend``, dicts such as ``v_mod_args``
as JSON text), so plain SQL works::

    SELECT label, wl_seq_kv, latency_ms FROM trials WHERE status = 'ok' ORDER BY latency_ms

Each result is committed on its own as it arrives (WAL journal: a killed writer loses at most the
trial in flight, readers never block); several processes may write one store at once, each
waiting up to ``BUSY_TIMEOUT_MS`` for SQLite's write lock. ``results.csv`` and
``results.parquet`` hold the same flat rows; ``run.json`` the resolved config, provenance and one
entry per invocation (with the machine's load when it started).

:func:`prepare_run_dir` decides, before anything runs, whether a command may write into a
directory: never over a run without ``force``; ``resume`` only a run whose stored trials the
config still holds. :class:`Interrupted` is Ctrl-C once ``results.csv`` and ``run.json`` agree
with the store again.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdpalab.measure.result import FINAL_STATUSES, Result
from sdpalab.spec import Constraints, SweepSpec, Variant, Workload, dump_spec

if TYPE_CHECKING:
    import pandas as pd

SQLITE, CSV, PARQUET, RUN_JSON = "results.sqlite", "results.csv", "results.parquet", "run.json"
BUSY_TIMEOUT_MS = 60_000
LOAD_WINDOW_S = 0.3
"""How long a run watches the CPUs before it starts, to tell whether other work is running."""
_FIXED = ("trial_id", "status", "label", "result_json", "written_utc")

# --------------------------------------------------------------------------- the store


def _sql_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _columns() -> list[str]:
    """Flat columns known up front (from a blank Result); others are added when first seen."""
    blank = Result(
        variant={f.name: None for f in dataclasses.fields(Variant)},
        workload={f.name: None for f in dataclasses.fields(Workload)},
    )
    return [c for c in blank.to_row() if c not in _FIXED]


class ResultStore:
    """SQLite store of a run's Results. ``path`` is the ``.sqlite`` file or the run directory
    (then ``<dir>/results.sqlite``); the directory is created if needed."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.suffix not in (".sqlite", ".sqlite3", ".db"):
            path = path / SQLITE
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # durable across a killed process
        flat = ", ".join(f'"{c}"' for c in _columns())
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS trials (trial_id TEXT PRIMARY KEY, status TEXT NOT NULL, "
            f"label TEXT, result_json TEXT NOT NULL, written_utc TEXT, {flat})"
        )
        self._known = self._table_columns()

    def _table_columns(self) -> set[str]:
        return {row[1] for row in self._db.execute("PRAGMA table_info(trials)")}

    def write(self, result: Result) -> None:
        """Insert or replace the row of ``result.trial_id`` (one commit)."""
        if not result.trial_id:
            raise ValueError("a Result needs a trial_id to be stored")
        row = {k: _sql_value(v) for k, v in result.to_row().items() if k not in _FIXED}
        row.update(
            trial_id=result.trial_id,
            status=result.status,
            label=result.label,
            result_json=json.dumps(result.to_dict(), default=str),
            written_utc=utc(),
        )
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._add_columns(row)
            names = ", ".join(f'"{c}"' for c in row)
            marks = ", ".join("?" for _ in row)
            updates = ", ".join(f'"{c}" = excluded."{c}"' for c in row if c != "trial_id")
            self._db.execute(
                f"INSERT INTO trials ({names}) VALUES ({marks}) "
                f"ON CONFLICT(trial_id) DO UPDATE SET {updates}",
                list(row.values()),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _add_columns(self, row: dict[str, Any]) -> None:
        missing = [c for c in row if c not in self._known]
        if missing:
            self._known = self._table_columns()  # another writer may have added them
            for column in (c for c in missing if c not in self._known):
                self._db.execute(f'ALTER TABLE trials ADD COLUMN "{column}"')
                self._known.add(column)

    def done_ids(self) -> set[str]:
        """Trial ids that have a final row (``--resume`` skips these)."""
        marks = ", ".join("?" for _ in FINAL_STATUSES)
        query = f"SELECT trial_id FROM trials WHERE status IN ({marks})"
        return {row[0] for row in self._db.execute(query, FINAL_STATUSES)}

    def results(self) -> list[Result]:
        """Every stored Result, in the order first written."""
        rows = self._db.execute("SELECT result_json FROM trials ORDER BY rowid")
        return [Result.from_dict(json.loads(text)) for (text,) in rows]

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]

    def export_csv(self, path: str | Path) -> Path:
        """Write every row as :meth:`Result.to_row` to a CSV file; returns its path."""
        return write_csv(path, [r.to_row() for r in self.results()])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Flat rows to a CSV file (dict and list cells as JSON), atomically; returns its path."""
    header: dict[str, None] = {}
    for row in rows:
        header.update(dict.fromkeys(row))
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(header))
        writer.writeheader()
        writer.writerows(
            {
                k: json.dumps(v, default=str) if isinstance(v, dict | list | tuple) else v
                for k, v in row.items()
            }
            for row in rows
        )
    tmp.replace(path)  # readers never see a half-written file
    return path


# --------------------------------------------------------------------------- run.json

_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^/@\s:]*:)[^\s/]*@")
_KEY_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
REDACTED = "***"


def redact_secrets(text: str) -> str:
    """``text`` with the password of every URL (``postgresql://user:pw@host/db``) and every
    ``password=...`` of a libpq string replaced by ``***``: what a command line, a storage
    URL or an error message may show in ``run.json``, a log or a terminal."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}@", text)
    return _KEY_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}", text)


def utc(t: float | None = None) -> str:
    """``2025-01-01T12:00:00Z``: the time stamps of the store and ``run.json``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def default_out(name: str) -> Path:
    """``runs/<name>-<UTC time>``."""
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def write_run_info(run_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write ``info`` as ``run.json``, atomically; returns its path."""
    path = Path(run_dir) / RUN_JSON
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` (resolved config, provenance, command line) as a dict; ``{}`` if absent."""
    try:
        data = json.loads((Path(run_dir) / RUN_JSON).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_constraints(run_dir: str | Path) -> Constraints:
    """The constraints a run was configured with (none when ``run.json`` names none)."""
    config = read_run_info(run_dir).get("config")
    found = config.get("constraints") if isinstance(config, dict) else None
    return Constraints(**found) if isinstance(found, dict) else Constraints()


def start_run(out: Path, spec: SweepSpec, n_trials: int, **details: Any) -> dict[str, Any]:
    """Record an invocation starting now in ``out/run.json`` (name, resolved config, provenance,
    the command line, the machine's load; earlier invocations kept); ``details`` go into its
    entry. Returns the information for :func:`finish_run`."""
    from sdpalab.measure.provenance import machine_load, provenance

    argv = [redact_secrets(a) for a in sys.argv]  # a storage URL's password stays out
    invocation = {
        "argv": argv,
        "command": shlex.join(argv),
        "started_utc": utc(),
        "load": machine_load(spec.device, window_s=LOAD_WINDOW_S),
        **details,
    }
    info = {
        "name": spec.name,
        **dump_spec(spec),
        "trials": n_trials,
        # points of the grid no machine could run: not trials, but the config asked for them
        "left_out": [{"label": t.label, "reason": t.invalid} for t in spec.left_out()],
        "provenance": provenance(spec.device, argv=invocation["argv"]),
        "argv": invocation["argv"],
        "command": invocation["command"],
        "invocations": [*read_run_info(out).get("invocations", []), invocation],
    }
    write_run_info(out, info)
    return info


def finish_run(out: Path, info: dict[str, Any], started: float, **summary: Any) -> float:
    """Export ``results.csv`` from the store, then record the invocation's end and ``summary``
    in ``run.json``. Returns the seconds since ``started`` (a ``time.time()``)."""
    with ResultStore(out) as store:
        store.export_csv(out / CSV)
    elapsed = time.time() - started
    info["invocations"][-1].update(finished_utc=utc(), elapsed_s=round(elapsed, 3), **summary)
    write_run_info(out, info)
    return elapsed


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; ``stored`` of its ``total`` trials are in ``out``, and
    ``results.csv`` and ``run.json`` were brought in line with the store before this was raised.
    A KeyboardInterrupt, so code that knows only that still stops."""

    def __init__(self, out: Path, stored: int, total: int) -> None:
        super().__init__(f"{stored} of {total} trials stored in {out}")
        self.out, self.stored, self.total = out, stored, total


def interrupted(out: Path, info: dict[str, Any], started: float, total: int) -> Interrupted:
    """Close an interrupted invocation: export ``results.csv`` from the store, mark the entry
    ``interrupted`` with the count stored, and return the :class:`Interrupted` to raise."""
    with ResultStore(out) as store:
        stored = len(store)
    finish_run(out, info, started, interrupted=True, stored=stored)
    return Interrupted(out, stored, total)


# --------------------------------------------------------------------------- may we write here?

_IGNORED_CONFIG_KEYS = ("description",)


def holds_run(path: str | Path) -> bool:
    """Whether ``path`` is a run directory (a store, a CSV or a ``run.json`` in it)."""
    path = Path(path)
    return path.is_dir() and any((path / name).exists() for name in (SQLITE, CSV, RUN_JSON))


def prepare_run_dir(
    out: str | Path,
    spec: SweepSpec | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    resumable: bool = True,
) -> Path:
    """Check that a run may write into ``out``, then create it; returns it as a Path.

    Raises ValueError, before anything is written, when ``out`` (or a folder above it) is a
    file, cannot be created or written, already holds a run and neither ``resume`` nor
    ``force`` is given, or ``resume`` finds no run or one of another config (one whose stored
    trials ``spec`` does not all hold: a config that grew may continue). ``force`` deletes the
    run in ``out`` first. ``resumable=False`` (a command without ``--resume``) leaves that flag
    out of the advice.
    """
    path = Path(out)
    if resume and force:
        raise ValueError("--resume and --force contradict each other; give one")
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise ValueError(
                f"--out {out}: {str(part)!r} is a file, not a directory; choose a directory"
            )
    if holds_run(path):
        if force:
            try:
                shutil.rmtree(path)
            except OSError as err:
                raise ValueError(
                    f"--out {out}: cannot remove the old run ({err.strerror})"
                ) from None
        elif resume:
            if spec is not None:
                _check_same_run(path, spec)
        else:
            held = _stored(path)
            advice = "--force to replace it"
            if resumable:
                advice = "--resume to continue it, " + advice
            raise ValueError(
                f"--out {out} already holds a run ({held} trials); pass {advice}, or choose "
                "another --out"
            )
    elif resume:
        raise ValueError(f"--out {out} holds no run: nothing to resume (drop --resume to start)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(
            f"--out {out}: cannot create the directory ({reason}); choose a writable path"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot write into the directory; choose a writable path")
    return path


def _stored(path: Path) -> int:
    if (path / SQLITE).exists():
        with ResultStore(path) as store:
            return len(store)
    try:
        with (path / CSV).open() as f:
            return max(0, sum(1 for _ in f) - 1)
    except OSError:
        return 0


def _check_same_run(path: Path, spec: SweepSpec) -> None:
    """Resuming continues the run of this config: every stored trial must be one of the
    config's, so ``run.json``'s new config still describes the whole store."""
    stored: set[str] = set()
    if (path / SQLITE).exists():
        with ResultStore(path) as store:
            stored = store.done_ids()  # every status is final: every row
    foreign = stored - {t.trial_id for t in spec.trials()}
    if not foreign:
        return
    before = read_run_info(path).get("config")
    now = json.loads(json.dumps(spec.to_dict(), default=str))
    differ = _differences(before, now) if isinstance(before, dict) else ["no config recorded"]
    shown = ", ".join(differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
    # the same config with other trial ids: written by an sdpalab whose ids differ
    why = f"keys that differ: {shown}" if shown else "same keys, other trial ids: another version"
    raise ValueError(
        f"--resume: {path} holds a run of another config ({len(foreign)} of its {len(stored)} "
        f"stored trials are not in this one; {why}); resume with the same config, choose "
        "another --out, or pass --force to replace it"
    )


def _differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Key paths (``grids[0].workload.seq_kv``) whose values differ between two configs."""
    a, b = dict(_leaves(before)), dict(_leaves(now))
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    return [k for k in keys if k.split(".")[0] not in _IGNORED_CONFIG_KEYS]


def _leaves(value: Any, prefix: str = ""):
    # a list of mappings (the grids) is walked into; a list of values (an axis) is one leaf
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{prefix}[{i}]")
    else:
        yield prefix, value


# --------------------------------------------------------------------------- reading back


def _run_dir(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {str(path)!r} does not exist")
    return path


def load_results(run_dir: str | Path) -> list[Result]:
    """Every trial's Result in ``run_dir``: from the store when it is there (provenance and
    settings included), else rebuilt from ``results.csv``."""
    path = _run_dir(run_dir)
    if (path / SQLITE).exists():
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
        written.append(write_csv(path / CSV, records(df)))
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
    """A DataFrame cell as a plain Python value: NaN → None, numpy scalars → Python."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        with contextlib.suppress(ValueError, AttributeError):
            value = value.item()
    return None if _missing(value) else value


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of ``df`` as dicts of plain Python values (see :func:`plain`)."""
    return [{k: plain(v) for k, v in row.items()} for row in df.to_dict("records")]


def decode_json(value: Any) -> Any:
    """A ``v_*`` or ``wl_*`` cell back to its value: JSON objects (``v_mod_args``) become
    dicts."""
    if isinstance(value, str) and value.startswith("{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _int_if_integral(value: Any) -> Any:
    # CSV turns int columns with gaps into floats
    return int(value) if isinstance(value, float) and value.is_integer() else value


_INT_FIELDS = {
    "latency_n",
    "saved_mem_bytes",
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
            workload[key[3:]] = _int_if_integral(decode_json(value))
        elif key.startswith("v_"):
            variant[key[2:]] = decode_json(value)
        else:
            fields[key] = _int_if_integral(value) if key in _INT_FIELDS else value
    # a CSV row of a workload naming no mask, beside rows of ones that do
    if workload.get("mod", 0) is None:
        del workload["mod"]
        workload.pop("mod_args", None)
    for key in ("reason", "trial_id", "label"):
        fields[key] = "" if fields.get(key) is None else str(fields[key])
    fields.setdefault("status", "ok")
    return Result.from_dict({"variant": variant, "workload": workload, **fields})
