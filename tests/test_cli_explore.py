"""``sdpalab pareto``, ``search`` and ``sensitivity`` as a user runs them: what they print, what
``--json`` writes, and their bad input. Runs are written from constructed Results (no
measurement); the search replays made-up measurements instead of running the engine."""

import json

import pytest
from rich.cells import cell_len

from cli_runner import run_cli
from report_fixtures import make_result, write_run

MiB = 2**20


@pytest.fixture
def narrow(monkeypatch):
    """The CLI's console as a 100-column terminal."""
    from sdpalab.cli_common import console

    monkeypatch.setattr(console, "width", 100)


def quick_run(path):
    """The quick preset's prefill at 1024 as the issue saw it, plus a decode at 8k context
    over 1 GiB of full-precision inputs."""
    tol = {"tolerance": 1.1e-5}
    results = [
        make_result(
            backend="flash",
            mod="causal",
            latency_ms=0.683,
            peak_mem_bytes=int(1.42 * MiB),
            peak_mem_total_bytes=int(5.42 * MiB),
            rel_fro_err=2.40e-7,
            **tol,
        ),
        make_result(
            backend="eager",
            mod="causal",
            latency_ms=1.48,
            iqr_ms=0.02,
            peak_mem_bytes=int(5.75 * MiB),
            peak_mem_total_bytes=int(9.75 * MiB),
            rel_fro_err=2.36e-7,
            **tol,
        ),
        make_result(
            backend="eager",
            mod="sliding_window",
            mod_args={"window": 128},
            latency_ms=0.3,
            peak_mem_bytes=MiB,
            peak_mem_total_bytes=5 * MiB,
            rel_fro_err=3e-2,
            **tol,
        ),
        make_result(backend="flex", mod="causal", status="unsupported", reason="no compiler"),
    ]
    for quant, kv, peak, err in (
        ("none", 1024 * MiB, 8 * MiB, 1e-7),
        ("int8", 260 * MiB, 16 * MiB, 4e-3),
        ("int4", 140 * MiB, 2048 * MiB, 6e-3),
    ):
        results.append(
            make_result(
                backend="math",
                phase="decode",
                seq=8192,
                batch=4,
                kv_cache="static",
                kv_quant=quant,
                latency_ms=3.0,
                iqr_ms=0.05,
                kv_cache_bytes=kv,
                peak_mem_bytes=peak,
                peak_mem_total_bytes=1024 * MiB + kv + peak,
                rel_fro_err=err,
                **tol,
            )
        )
    return write_run(path, results)


def test_pareto_says_why_each_result_is_off_the_front(tmp_path, capsys, narrow):
    run = quick_run(tmp_path / "run")
    code, out, err = run_cli(capsys, "pareto", run)
    assert code == 0, err
    text = " ".join(out.split())
    assert "eager/causal [float32]: dominated by flash/causal [float32]" in text
    assert "flex/causal [float32]: unsupported: no compiler" in text
    assert "over tol." in text  # the fast sliding window computes another function
    code, out, err = run_cli(capsys, "pareto", run, "--max-memory", "600MiB", "--max-error", "1e-2")
    assert code == 0, err
    text = " ".join(out.split())
    assert "math/static [float32]: over max_memory (persistent 1.01 GiB > 600 MiB)" in text
    assert "recommended (latency): math/static+int8 [float32]" in text


def test_pareto_memory_measure_is_the_users_and_shows_as_a_column(tmp_path, capsys, narrow):
    run = quick_run(tmp_path / "run")
    code, out, err = run_cli(
        capsys, "pareto", run, "--priority", "memory", "--max-memory", "600MiB",
        "--max-error", "1e-1", "--memory", "cache",
    )  # fmt: skip
    assert code == 0, err
    text = " ".join(out.split())
    assert "memory = cache" in text and "KV cache" in text
    assert "recommended (memory): math/static+int4 [float32]" in text
    assert "140 MiB cache" in text
    code, _, err = run_cli(capsys, "pareto", run, "--memory", "ram")
    assert code == 2 and "memory='ram' is not valid; choose one of: auto, cache" in err


def test_pareto_json_is_one_document_on_stdout(tmp_path, capsys):
    run = quick_run(tmp_path / "run")
    code, out, err = run_cli(capsys, "pareto", run, "--json", "--report")
    assert code == 0, err
    doc = json.loads(out)  # stdout holds the document and nothing else
    assert doc["memory"] == "auto" and doc["limits"]["max_memory"] is None
    # each mask its own front: the sliding window never competes with causal attention
    prefill, window, decode = doc["shapes"]
    assert (prefill["context"]["mod"], window["context"]["mod"]) == (
        "causal",
        "sliding_window(window=128)",
    )
    assert [r["configuration"] for r in prefill["front"]] == ["flash/causal [float32]"]
    assert [r["configuration"] for r in window["front"]] == [
        "eager/sliding_window(window=128) [float32]"
    ]
    assert prefill["recommendation"]["best"]["configuration"] == "flash/causal [float32]"
    assert {"configuration": "eager/causal [float32]", "reason": "dominated by flash/causal "
            "[float32]"}.items() <= prefill["excluded"][-1].items()  # fmt: skip
    assert decode["front"][0]["memory_measure"] == "persistent"
    assert decode["front"][0]["kv_cache_bytes"] == 1024 * MiB
    assert "across_shapes" in doc
    assert "written:" in err and (run / "report.html").is_file()


def test_search_json_is_one_document_on_stdout(tmp_path, capsys, monkeypatch):
    import sdpalab.explore.search as search_module

    def made_up(trial):
        var, wl = trial.variant_spec, trial.workload_spec
        lat = {"math": 2.0, "eager": 3.0}[var["backend"]] * (0.6 if var["mod"] == "causal" else 1)
        fields = dict(latency_ms=lat, latency_iqr_ms=0.01, rel_fro_err=2e-7, tolerance=1.1e-5)
        mem = wl["seq_kv"] ** 2 * 4
        return trial.result("ok", "", peak_mem_bytes=mem, peak_mem_total_bytes=mem, **fields)

    real = search_module.search
    monkeypatch.setattr(
        search_module,
        "search",
        lambda *a, **kw: real(*a, runner=lambda trials: [made_up(t) for t in trials], **kw),
    )
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "name: tiny\ndevice: cpu\n"
        "workload: {phase: prefill, batch: 1, heads_q: 2, heads_kv: 1, seq_kv: 32, head_dim: 16}\n"
        "variants: {backend: [math, eager], mod: [none, causal]}\n"
    )
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "search", config, "--trials", 4, "--out", out, "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["search"]["measured"] == 4 and doc["search"]["out"] == str(out)
    by_mask = {shape["context"]["mod"]: shape for shape in doc["shapes"]}  # a front per mask
    assert by_mask["causal"]["recommendation"]["best"]["configuration"] == "math/causal [float32]"
    assert by_mask["none"]["recommendation"]["best"]["configuration"] == "math [float32]"
    assert "written:" in err


def test_sensitivity_with_an_unknown_objective_exits_2_naming_the_valid_ones(tmp_path, capsys):
    run = quick_run(tmp_path / "run")
    code, out, err = run_cli(capsys, "sensitivity", run, "--objective", "speed")
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "objective 'speed' is not valid; choose from: memory," in lines[0]
    assert "latency_ms" in lines[0] and "rel_fro_err" in lines[0]


def test_pareto_fits_a_100_column_terminal(tmp_path, capsys, narrow):
    # six shapes: the across-shapes table used to cut names and headers short with "…"
    results = [
        make_result(
            backend=backend,
            mod=mod,
            mod_args=args,
            seq=seq,
            batch=batch,
            latency_ms=lat * seq / 256,
            peak_mem_bytes=seq * 4096,
        )
        for backend, mod, args, lat in (
            ("math", "none", None, 2.0),
            ("eager", "none", None, 3.0),
            ("flex", "sliding_window", {"window": 128}, 1.0),
        )
        for seq in (256, 1024, 4096)
        for batch in (1, 8)
    ]
    run = write_run(tmp_path / "run", results)
    code, out, err = run_cli(capsys, "pareto", run)
    assert code == 0, err
    lines = out.splitlines()
    assert max(cell_len(line.rstrip()) for line in lines) <= 100
    assert "…" not in out
    tops = [line.rstrip() for line in lines if line.startswith("┏")]
    assert tops and all(line.endswith("┓") for line in tops)  # no table cropped at the edge
    assert "flex/sliding_window(window=128) [float32]" in " ".join(out.split())
