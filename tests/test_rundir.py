"""The SQLite results store: one row per trial, upserts, flat SQL columns, CSV export, and
several processes writing one store at once."""

import csv
import multiprocessing as mp
import sqlite3

import pytest

from sdpalab.measure.result import Result
from sdpalab.run.rundir import SQLITE, ResultStore

VARIANT = {
    "backend": "math",
    "mod": "causal",
    "mod_args": {},
    "kv_cache": "none",
    "kv_quant": "none",
    "kv_args": {},
    "weight_quant": "none",
    "projections": False,
}
WORKLOAD = {
    "phase": "prefill",
    "batch": 1,
    "heads_q": 2,
    "heads_kv": 2,
    "seq_q": 16,
    "seq_kv": 16,
    "head_dim": 16,
    "dtype": "float32",
    "device": "cpu",
}


def _result(i: int, status: str = "ok", **fields) -> Result:
    base = dict(
        latency_ms=0.5 + i,
        peak_mem_bytes=1024 * i,
        rel_fro_err=1e-7,
        noisy=False,
        kernel="math",
        provenance={"torch": "x"},
        settings={"repeats": 3},
    )
    base.update(fields)
    return Result(
        variant=VARIANT,
        workload={**WORKLOAD, "seq_kv": 16 + i, "seq_q": 16 + i},
        status=status,
        trial_id=f"t{i:04d}",
        label="math/causal",
        **base,
    )


def test_round_trip_and_done_ids(tmp_path):
    with ResultStore(tmp_path) as store:
        assert store.path == tmp_path / SQLITE
        for i in range(5):
            store.write(_result(i, status="ok" if i % 2 else "oom"))
        assert store.done_ids() == {f"t{i:04d}" for i in range(5)}
        back = store.results()
    assert [r.trial_id for r in back] == [f"t{i:04d}" for i in range(5)]
    assert back[1] == _result(1)  # the whole Result comes back, provenance and settings included


def test_upsert_keeps_one_row_per_trial(tmp_path):
    with ResultStore(tmp_path / "x.sqlite") as store:
        store.write(_result(1, status="timeout", latency_ms=None))
        store.write(_result(1))
        assert len(store) == 1
        assert store.results()[0].status == "ok"


def test_flat_columns_answer_sql(tmp_path):
    with ResultStore(tmp_path) as store:
        for i in range(4):
            store.write(_result(i))
        store.write(_result(9, status="crash", latency_ms=None, reason="worker died"))
    db = sqlite3.connect(tmp_path / SQLITE)
    rows = db.execute(
        "SELECT label, wl_seq_kv, latency_ms, v_backend FROM trials WHERE status = 'ok' "
        "ORDER BY latency_ms DESC LIMIT 2"
    ).fetchall()
    assert rows == [("math/causal", 19, 3.5, "math"), ("math/causal", 18, 2.5, "math")]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT reason FROM trials WHERE status='crash'").fetchone() == (
        "worker died",
    )


def test_unknown_fields_get_a_column(tmp_path):
    class Wider(Result):
        def to_row(self):
            return {**super().to_row(), "new_metric_ms": 1.25}

    with ResultStore(tmp_path) as store:
        store.write(Wider(**_result(1).__dict__))
    db = sqlite3.connect(tmp_path / SQLITE)
    assert db.execute("SELECT new_metric_ms FROM trials").fetchone() == (1.25,)


def test_export_csv(tmp_path):
    with ResultStore(tmp_path) as store:
        for i in range(3):
            store.write(_result(i))
        path = store.export_csv(tmp_path / "results.csv")
    rows = list(csv.DictReader(path.open()))
    assert [r["trial_id"] for r in rows] == ["t0000", "t0001", "t0002"]
    assert rows[2]["latency_ms"] == "2.5" and rows[0]["v_mod_args"] == "{}"


def test_write_needs_trial_id(tmp_path):
    with ResultStore(tmp_path) as store, pytest.raises(ValueError, match="trial_id"):
        store.write(Result(variant=VARIANT, workload=WORKLOAD))


def _writer(path: str, worker: int, count: int) -> None:
    with ResultStore(path) as store:
        for i in range(count):
            store.write(_result(worker * 1000 + i))
            store.write(_result(i))  # every writer also fights over the same rows


COUNT = 100


@pytest.mark.slow
def test_concurrent_writers_do_not_corrupt(tmp_path):
    # fork: the children need no second torch import (the store itself is plain sqlite3)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, COUNT)) for w in range(1, 5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    db = sqlite3.connect(tmp_path / SQLITE)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    ids = [r[0] for r in db.execute("SELECT trial_id FROM trials")]
    assert len(ids) == len(set(ids)) == 4 * COUNT + COUNT
    with ResultStore(tmp_path) as store:
        assert len(store.results()) == 5 * COUNT
