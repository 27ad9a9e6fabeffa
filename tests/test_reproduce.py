"""`sdpalab reproduce case-study`: the case study's corrections are demonstrated by measurements.

The fast tests run each correction on its own; the slow one runs the whole command (--quick,
which compiles FlexAttention once) and checks what it printed and wrote.
"""

import json

import pytest
import torch

from sdpalab.casestudy import corrections as fix
from sdpalab.casestudy.experiments import FLEX_SIZES, KV_SIZES, trials
from sdpalab.casestudy.published import PUBLISHED, published_for, to_ms


def test_published_figures_transcribed():
    assert len(PUBLISHED) == 4 + 8 + 3
    kv = published_for("kv_cache", seq_len=12, hidden=128)
    assert (kv.memory_profile, kv.benchmark) == ("338.52 ms", "4.96 ms")
    q = published_for("quantization", "quantized", seq_len=4, hidden=16)
    assert to_ms(q.benchmark) == pytest.approx(0.44275)
    assert to_ms(published_for("flex", batch=32, seq_len=32, hidden=256).memory_profile) == 180.934


def test_shapes_map_to_bhsd():
    rows = list(trials("cpu"))
    kv = [t for t in rows if t.experiment == "kv_cache" and t.workload.phase == "prefill"]
    for t, (seq_len, hidden) in zip(kv, KV_SIZES, strict=True):
        wl = t.workload
        # (seq_len, hidden, hidden) as SDPA read it: seq_len was a batch.
        assert (wl.batch, wl.heads_q, wl.seq_kv, wl.head_dim) == (seq_len, 1, hidden, hidden)
        assert t.variant.kv_cache == "dynamic"
    flex = [t for t in rows if t.variant.backend == "flex"]
    for t, (batch, seq_len, hidden) in zip(flex, FLEX_SIZES, strict=True):
        wl = t.workload
        assert (wl.batch, wl.heads_q, wl.seq_kv, wl.head_dim) == (batch, seq_len, hidden, hidden)
    quants = {t.variant.weight_quant for t in rows if t.experiment == "quantization"}
    assert quants == {"none", "int8_dynamic", "int8_weight_only"}
    assert len(list(trials("cpu", quick=True))) < len(rows)


def test_top_left_causal_cache_is_wrong_and_ours_is_right():
    mask, length = fix.cached_decode("cpu")
    assert mask.values["theirs_decode"] > 0.1
    assert mask.values["ours_decode"] < 1e-4
    # The prefill call is square, where top-left and bottom-right agree: the bug is in decode.
    assert mask.values["theirs_prefill"] < 1e-4
    assert set(length.values["stored"]) == {16}  # head_dim, whatever the length
    assert length.values["real"][0] == 37 and length.values["real"][-1] == 45


def test_cuda_check_never_fires():
    c = fix.cuda_check("cpu")
    assert c.values["expr"] is False
    assert c.values["own_name"] is False
    assert c.values["literal"] is False and c.values["indexed"] is False
    assert "CPU" in c.evidence


def test_stateful_benchmark_grew_the_cache():
    c = fix.stateful_benchmark("cpu", number=100)
    assert c.values["cache_tokens"] == 103 * 16  # profile 1 + timeit warm-up 2 + 100


def test_quantized_projections_that_did_not_exist():
    c = fix.phantom_quantization("cpu", hidden=32)
    assert c.values["their_linears"] == 0
    assert c.values["their_quantized_modules"] in (0, None)
    linears, quantized, fp32_bytes = c.values["ours_none"]
    assert (linears, quantized, fp32_bytes) == (4, 0, 4 * 32 * 32 * 4)
    linears, quantized, int8_bytes = c.values["ours_int8_weight_only"]
    assert quantized == 4 and int8_bytes < fp32_bytes / 2


def test_missing_scale_is_far_off():
    c = fix.missing_scale("cpu")
    assert c.values["unscaled_max_abs"] > 0.1
    assert c.values["sdpa_max_abs"] < 1e-4


def test_time_reported_as_memory_shows_both_quantities():
    q = torch.randn(4, 1, 16, 16)
    c = fix.time_reported_as_memory(
        lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q), q, "sdpa"
    )
    assert all(t > 0 for t in c.values["cpu_total_ms"])
    # Bytes of the score-free fused call: the same every time, whatever the clock says.
    assert len(set(c.values["peak_mem_bytes"])) == 1
    assert "ms" in c.evidence and " B " in c.evidence


@pytest.mark.slow
@pytest.mark.xdist_group("flex")
def test_reproduce_case_study_cli_quick(tmp_path):
    from typer.testing import CliRunner

    from sdpalab.cli import app

    out = tmp_path / "cs"
    res = CliRunner().invoke(app, ["reproduce", "case-study", "--out", str(out), "--quick"])
    assert res.exit_code == 0, res.output
    assert "published figures beside" in res.output and "measured wrongly" in res.output
    assert str(out / "case-study.md") in res.output
    md = (out / "case-study.md").read_text()
    for figure in ("338.52 ms", "243.24 us", "516.692 ms"):
        assert figure in md
    assert "date:" in md and "device: cpu" in md and "reproduce case-study" in md
    import pandas as pd

    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == len(list(trials("cpu", quick=True)))
    assert (rows["status"] == "ok").all(), rows[["label", "status", "reason"]]
    assert rows["peak_mem_bytes"].notna().all() and rows["profiler_cpu_total_ms"].notna().all()
    done = {c["issue"]: c["values"] for c in json.loads((out / "corrections.json").read_text())}
    assert done["top-left causal mask in the cache"]["theirs_decode"] > 0.1
    assert done["top-left causal mask in the cache"]["ours_decode"] < 1e-4
    flex = done["FlexAttention ran uncompiled"]
    assert flex["uncompiled_peak_bytes"] > flex["score_matrix_bytes"]
    assert flex["compiled_peak_bytes"] < flex["uncompiled_peak_bytes"] / 4
