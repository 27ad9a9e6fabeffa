"""The results store: one SQLite file per run directory, one row per trial.

Table ``trials``: ``trial_id`` (primary key: the stable hash of the trial's config), ``status``,
``label``, ``result_json`` (the whole :class:`Result`, config and provenance included),
``written_utc``, then the flat unit-suffixed columns of :meth:`Result.to_row` (``latency_ms``,
``peak_mem_bytes``, ``wl_seq_kv``, ``v_backend``, ...) so plain SQL works::

    SELECT label, wl_seq_kv, latency_ms FROM trials WHERE status = 'ok' ORDER BY latency_ms

Each result is committed on its own as it arrives (WAL journal, so a killed writer loses at most
the trial in flight and readers never block). Several processes may write one store at once:
writes take SQLite's write lock (``BEGIN IMMEDIATE``) and wait for it up to ``busy_timeout``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from sdpalab.measure.result import FINAL_STATUSES, Result

FILENAME = "results.sqlite"
BUSY_TIMEOUT_MS = 60_000
_FIXED = ("trial_id", "status", "label", "result_json", "written_utc")


def _sql_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _columns() -> list[str]:
    """Flat columns known up front (from a blank Result); others are added when first seen."""
    from sdpalab.spec import Variant, Workload

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
            path = path / FILENAME
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
            written_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
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
        rows = [r.to_row() for r in self.results()]
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

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
