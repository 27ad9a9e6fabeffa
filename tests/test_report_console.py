"""Console tables, doctor and listings; rundir.load, the CSV round trip and the Parquet export."""

from types import SimpleNamespace

import pandas as pd
import pytest
from rich.console import Console

from report_fixtures import make_result, sweep_results, write_run
from sdpalab.report.console import (
    render_comparison,
    render_doctor,
    render_listing,
    render_results,
    render_run,
)
from sdpalab.report.tables import format_ms, group_tables
from sdpalab.run.rundir import ResultStore, export, load, load_results
from sdpalab.units import format_bytes


def _text(render, *args, **kwargs) -> str:
    console = Console(record=True, width=200, color_system=None)
    render(console, *args, **kwargs)
    return console.export_text()


def test_tables_group_like_compare():
    prefill, decode = group_tables(sweep_results())
    assert prefill.title == "prefill · float32 · cpu · B=1 Hq=8 Hkv=2 D=64"
    assert prefill.columns == ["S=256", "S=512", "S=1024", "S=2048", "S=4096"]
    assert prefill.rows[:2] == ["math", "efficient"]
    best = {col: row for (row, col), cell in prefill.cells.items() if cell.best}
    assert best == {
        "S=256": "efficient",
        "S=512": "efficient",
        "S=1024": "flex/sliding_window(window=128)",
        "S=2048": "flex/sliding_window(window=128)",
    }
    assert prefill.cells[("math", "S=4096")].status == "oom"
    assert prefill.cells[("flex/sliding_window(window=128)", "S=256")].noisy
    assert decode.title.startswith("decode · float32 · cpu") and "Sq=1" in decode.title
    assert decode.rows == ["auto/static", "auto/static+int8", "auto/static+int4"]


def test_render_results_text():
    text = _text(render_results, sweep_results(), title="my [bold]run")
    assert "my [bold]run" in text  # user text is never markup
    for fragment in (
        "S=256",
        "S=16384",
        "efficient",
        "auto/static+int4",
        "0.100",
        "256 KiB",
        "0.225 !",
        "noisy",
        "27 trials: 25 ok, 1 oom, 1 unsupported",
        "failures",
        "flash needs CUDA & a <GPU>",
        "OutOfMemoryError",
    ):
        assert fragment in text, fragment
    assert "no trials" in _text(render_results, [])


def test_render_run_lists_paths(tmp_path):
    write_run(tmp_path, sweep_results()[:4])
    text = _text(render_run, SimpleNamespace(results=sweep_results()[:4], out=tmp_path))
    assert "results.csv" in text and "run.json" in text and "4 trials: 4 ok" in text


def test_render_doctor_tolerates_missing_keys():
    assert "device: ?" in _text(render_doctor, {})
    full = {
        "device": "cpu",
        "device_name": "Some CPU",
        "dtypes": ["float32", "bfloat16"],
        "backends": {"math/float32": "ok", "flash/float32": "unsupported: needs CUDA"},
        "ceilings": {"matmul_tflops": 1.234, "copy_gbps": 20.5, "measured_at": "today"},
        "provenance": {"torch": "2.13", "argv": ["sdpalab", "doctor"], "cuda": None},
    }
    text = _text(render_doctor, full)
    for fragment in (
        "Some CPU",
        "flash/float32",
        "unsupported: needs CUDA",
        "1.23 TFLOP/s",
        "20.5 GB/s",
        "sdpalab doctor",
    ):
        assert fragment in text, fragment
    assert "not measured" in _text(render_doctor, {"device": "cpu", "ceilings": None})


def test_render_listing():
    variants = _text(render_listing, "variants")
    assert "sliding" in variants and "int4_weight_only" in variants and "page_size" in variants
    mods = _text(render_listing, "mods")
    assert "window: int (required)" in mods and "cap: float = 30.0" in mods
    presets = _text(render_listing, "presets")
    assert "preset" in presets or "not installed" in presets
    with pytest.raises(ValueError, match="choose one of"):
        render_listing(Console(), "kernels")


def test_render_comparison_only_changed():
    from sdpalab.report.compare import compare_runs

    base = [make_result(backend="math", seq=s, latency_ms=1.0) for s in (256, 512)]
    new = [
        make_result(backend="math", seq=256, latency_ms=3.0),
        make_result(backend="math", seq=512, latency_ms=1.0),
    ]
    text = _text(render_comparison, compare_runs(base, new), only_changed=True)
    assert "S=256" in text and "3.00x" in text and "S=512" not in text
    assert "1 slower, 1 same (same rows not shown)" in text


def test_formats():
    assert [format_ms(x) for x in (0.01234, 1.234, 12.34, 1234.5, None)] == [
        "0.012",
        "1.23",
        "12.3",
        "1234",
        "-",
    ]
    assert [format_bytes(x) for x in (512, 1536, 3 * 2**30, None)] == [
        "512 B",
        "1.5 KiB",
        "3 GiB",
        "-",
    ]


def test_load_round_trip_and_export(tmp_path):
    results = sweep_results()
    write_run(tmp_path, results)
    df = load(tmp_path)
    assert isinstance(df, pd.DataFrame) and len(df) == len(results)
    for column in (
        "latency_ms",
        "peak_mem_bytes",
        "rel_fro_err",
        "wl_seq_kv",
        "v_backend",
        "v_mod_args",
        "kv_cache_bytes",
        "status",
    ):
        assert column in df.columns
    back = load_results(tmp_path)
    for got, want in zip(back, results, strict=True):
        assert got.variant == want.variant and got.workload == want.workload
        assert (got.status, got.reason, got.label, got.trial_id) == (
            want.status,
            want.reason,
            want.label,
            want.trial_id,
        )
        assert got.latency_ms == want.latency_ms and got.peak_mem_bytes == want.peak_mem_bytes
    written = export(tmp_path)
    assert tmp_path / "results.parquet" in written
    parquet = pd.read_parquet(tmp_path / "results.parquet")
    assert list(parquet.columns) == list(df.columns)
    pd.testing.assert_series_equal(parquet["latency_ms"], df["latency_ms"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_results(tmp_path / "empty")


def test_load_from_the_store(tmp_path):
    results = sweep_results()
    with ResultStore(tmp_path) as store:
        for r in results:
            store.write(r)
    back = load_results(tmp_path)  # no results.csv: the store is the only source
    assert [r.trial_id for r in back] == [r.trial_id for r in results]
    assert back[0].provenance == results[0].provenance  # the store keeps what a CSV cannot
    df = load(tmp_path)
    assert len(df) == len(results) and df["latency_ms"].notna().sum() == 25
    export(tmp_path)
    assert (tmp_path / "results.csv").exists() and (tmp_path / "results.parquet").exists()


def test_variants_sharing_a_label_get_told_apart():
    results = [
        make_result(backend="math", phase="decode", kv_cache="paged", kv_args={"page_size": p})
        for p in (16, 64)
    ]
    (table,) = group_tables(results)
    assert table.rows == [
        'math/paged [kv_args={"page_size": 16}]',
        'math/paged [kv_args={"page_size": 64}]',
    ]


def _decode_mix() -> list:
    """Two graph-timed decode steps and one eager (flex) one, on a GPU."""
    common = dict(phase="decode", kv_cache="static", seq=4096)
    graph = dict(timing_method="cuda_graph", **common)
    eager = dict(timing_method="cuda_events (no graph: compiled flex ...)", **common)
    return [
        make_result(backend="cudnn", latency_ms=0.37, **graph),
        make_result(
            backend="triton_qdecode",
            kv_quant="int8",
            latency_ms=0.31,
            peak_mem_bytes=1 << 19,
            **graph,
        ),
        make_result(backend="flex", latency_ms=0.76, rel_fro_err=1e-7, **eager),
    ]


def test_eager_timings_are_marked_only_among_graph_replays():
    from sdpalab.explore.recommend import summarize_front
    from sdpalab.report.search_report import front_section, render_front
    from sdpalab.report.sections import summary_html
    from sdpalab.report.tables import EAGER_NOTE, eager_among_graphs

    assert eager_among_graphs(["cuda_graph", "cuda_events (no graph: x)", None]) == {1}
    assert eager_among_graphs(["cuda_events", "cuda_events (no graph: x)"]) == set()
    assert eager_among_graphs(["cpu_clock", "cpu_clock"]) == set()

    mixed = _decode_mix()
    (table,) = group_tables(mixed)
    marked = [table.cells[(row, table.columns[0])].eager for row in table.rows]
    assert marked == [False, False, True]
    text = _text(render_results, mixed)
    assert "0.760 e" in text and EAGER_NOTE[:40] in " ".join(text.split())
    assert " e\n" not in _text(render_results, mixed[:2]) and "eager" not in _text(
        render_results, mixed[:2]
    )
    assert EAGER_NOTE[:40] in summary_html(mixed)

    summary = summarize_front(mixed)
    front = _text(render_front, summary)
    assert "0.760 e" in front and EAGER_NOTE[:40] in " ".join(front.split())
    _, html = front_section(summary)
    assert "0.760 e" in html and "eager call" in html


def _narrow(render, *args) -> str:
    """What a 100-column terminal shows."""
    console = Console(record=True, width=100, color_system=None)
    render(console, *args)
    return console.export_text()


def _fits(text: str) -> None:
    from rich.cells import cell_len

    assert max(cell_len(line.rstrip()) for line in text.splitlines()) <= 100
    assert "…" not in text  # wrapped or left out, never cut
    tops = [line.rstrip() for line in text.splitlines() if line.startswith("┏")]
    assert all(line.endswith("┓") for line in tops), tops  # never cropped at the edge


def test_a_wide_sweep_table_wraps_to_fit_100_columns():
    # 12 shapes: the cells used to be cut to "49…" to squeeze into the terminal
    results = [
        make_result(
            backend=backend,
            phase="decode",
            kv_cache="static",
            kv_quant=quant,
            seq=seq,
            batch=batch,
            latency_ms=12.345 * seq / 1024,
            peak_mem_bytes=seq * batch * 4096,
        )
        for backend in ("math", "flash")
        for quant in ("none", "int8", "kivi4")
        for seq in (1024, 4096, 16384, 65536)
        for batch in (1, 8, 32)
    ]
    text = _narrow(render_results, results)
    _fits(text)
    assert "(continued, 2)" in text
    for header in ("B=1 S=1024", "B=32 S=65536"):
        assert header in text
    assert text.count("790") == 3 * 6  # every cell of every variant, once


def test_model_bench_fits_100_columns():
    from sdpalab.models.generation import ModelRun
    from sdpalab.report.console import render_model_bench
    from sdpalab.run.model_trial import ModelBench

    runs = tuple(
        ModelRun(
            label,
            "sdpa" if label == "stock" else "sdpalab",
            cache,
            "ok",
            prefill_ms=81.0,
            decode_ms_per_token=7.06,
            tokens_per_s=141.6,
            peak_mem_bytes=2**31,
            kv_cache_bytes=2**28,
        )
        for label, cache in (
            ("stock", "DynamicCache"),
            ("sl:auto:dynamic+kivi4", "SdpalabCache(dynamic+kivi4)"),
            ("sl:flex:sliding_window(window=4096)+paged+int8", "SdpalabCache(paged+int8)"),
        )
    )
    bench = ModelBench("tiny-llama", "decoder", "cpu", "float32", 1, 128, 32, runs)
    text = _narrow(render_model_bench, bench)  # it used to print as wide as its longest name
    _fits(text)
    first = "".join(line.split("│")[1].strip() for line in text.splitlines() if "│" in line)
    assert "sl:flex:sliding_window(window=4096)+paged+int8" in first  # folded, not cut
