"""Phase ``train``: forward and backward measured, gradients checked against the float64
oracle's autograd ones, memory that grows as the backward keeps it, and a train sweep through
the CLI, on awkward shapes (GQA, head_dim 80, odd lengths, q_len < kv_len bottom-right)."""

import csv
import re

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

import sdpalab as sl
from cli_runner import run_cli
from sdpalab.analysis import PerformanceAnalysis
from sdpalab.attention.mods import make_mod
from sdpalab.attention.reference import attention_grads_ref, attention_ref
from sdpalab.explore.recommend import recommend
from sdpalab.measure.accuracy import grad_tolerance, tolerance
from sdpalab.measure.timing import time_steps
from sdpalab.run.trial import call_cost
from sdpalab.spec import MeasureSettings
from sdpalab.spec.config import load_spec, spec_from_dict

FAST = MeasureSettings(warmup=0, repeats=2, memory=False)
AWKWARD = dict(batch=2, heads_q=4, heads_kv=2, seq_q=37, seq_kv=53, head_dim=80)
"""GQA (2 query heads per KV head), head_dim 80, odd lengths, queries bottom-right."""
MODS = [
    ("none", {}),
    ("causal", {}),
    ("sliding_window", {"window": 9}),
    ("prefix_lm", {"prefix": 5}),
    ("document", {"lengths": [20, 17]}),
    ("alibi", {}),
    ("softcap", {"cap": 5.0}),
    ("relative_bias", {"max_distance": 8}),
]
REFUSED = {
    ("math", "softcap"): "non-additively",
    ("flash", "softcap"): "non-additively",
    ("flash", "relative_bias"): "cannot run",  # no CPU flash kernel takes a bias needing grad
}
"""What torch cannot differentiate on a CPU, and a word of the reason the Result gives."""


def _train(backend, mod="none", mod_args=None, settings=FAST, **shape):
    wl = sl.Workload(phase="train", **(shape or AWKWARD))
    return sl.measure(sl.Variant(backend=backend, mod=mod, mod_args=mod_args or {}), wl, settings)


@pytest.mark.parametrize("backend", ["math", "flash", "eager"])
@pytest.mark.parametrize(("mod", "args"), MODS, ids=[m for m, _ in MODS])
def test_gradients_match_the_float64_oracle(backend, mod, args):
    res = _train(backend, mod, args)
    if (backend, mod) in REFUSED:
        assert res.status == "unsupported" and REFUSED[backend, mod] in res.reason
        return
    assert res.ok, res.reason
    assert res.rel_fro_err <= res.tolerance == tolerance(torch.float32)
    for err in (res.dq_rel_err, res.dk_rel_err, res.dv_rel_err):
        assert err <= res.grad_tolerance == grad_tolerance(torch.float32)
    # a learned table's gradient is checked too; other mods learn nothing
    assert (res.dparam_rel_err is not None) == (mod == "relative_bias")
    errors = [res.dq_rel_err, res.dk_rel_err, res.dv_rel_err, res.dparam_rel_err]
    assert res.grad_rel_err == max(e for e in errors if e is not None) <= res.grad_tolerance
    assert res.latency_fwd_ms > 0 and res.latency_bwd_ms > 0
    assert res.latency_ms >= max(res.latency_fwd_ms, res.latency_bwd_ms)
    forward_flops, _ = call_cost(sl.Workload(phase="prefill", **AWKWARD), res.allowed_fraction)
    assert res.flops == round(3.5 * forward_flops)  # the backward counted as 2.5x the forward
    assert res.tflops_fwd > 0 and res.tflops_bwd > 0


@pytest.mark.parametrize("backend", ["math", "flash"])
def test_bfloat16_gradients_within_their_tolerance(backend):
    wl = sl.Workload(phase="train", dtype="bfloat16", **AWKWARD)
    res = sl.measure(sl.Variant(backend=backend, mod="causal"), wl, FAST)
    assert res.ok and res.grad_tolerance == grad_tolerance(torch.bfloat16)
    # bf16 rounding shows, and stays within what the precision allows
    assert 1e-4 < res.grad_rel_err <= res.grad_tolerance


def test_oracle_gradients_are_autograds_of_float64_sdpa():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, h, n, 80, generator=gen) for h, n in ((4, 37), (2, 53), (2, 53)))
    dout = torch.randn(2, 4, 37, 80, generator=gen)
    ref = attention_grads_ref(q, k, v, dout, "causal", block_rows=10)  # four blocks of rows
    leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    with sdpa_kernel([SDPBackend.MATH]):
        out = F.scaled_dot_product_attention(
            *leaves, attn_mask=causal_lower_right(37, 53), enable_gqa=True
        )
    out.backward(dout.double())
    torch.testing.assert_close(ref["out"], out.detach())
    torch.testing.assert_close(ref["out"], attention_ref(q, k, v, "causal"))
    for name, leaf in zip(("dq", "dk", "dv"), leaves, strict=True):
        torch.testing.assert_close(ref[name], leaf.grad, rtol=1e-10, atol=1e-12)


def test_learned_table_gradient_is_the_derivative_of_the_loss():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen).double() for n in (7, 11, 11))
    dout = torch.randn(1, 2, 7, 16, generator=gen).double()
    args = {"max_distance": 3}
    ref = attention_grads_ref(q, k, v, dout, "relative_bias", args, block_rows=3)
    table = make_mod("relative_bias", args, q_len=7, kv_len=11, heads=2, device="cpu")
    base = table.params["table"].double()

    def loss(t):
        mod = table.with_params({"table": t})
        return (attention_ref(q, k, v, mod) * dout).sum()

    step = torch.zeros_like(base)
    step[1, 2] = 1e-6
    numeric = (loss(base + step) - loss(base - step)) / 2e-6
    assert ref["dtable"][1, 2].item() == pytest.approx(numeric.item(), rel=1e-5)


def test_flex_says_why_it_cannot_train_on_a_cpu():
    res = _train("flex", "causal")
    assert res.status == "unsupported" and "backward on CPU" in res.reason


def test_decode_only_backend_has_no_backward():
    res = _train("triton_qdecode")
    assert res.status == "unsupported" and "no backward" in res.reason


def test_a_cache_or_projections_can_never_train():
    wl = sl.Workload(phase="train", seq_kv=16, heads_q=2, head_dim=8)
    with pytest.raises(ValueError, match="kv_cache='static' cannot train"):
        sl.measure(sl.Variant(backend="math", kv_cache="static"), wl)
    with pytest.raises(ValueError, match="projections cannot train"):
        sl.measure(sl.Variant(backend="math", projections=True), wl)
    config = {
        "name": "t",
        "device": "cpu",
        "workload": {"phase": "train", "seq_kv": 16, "heads_q": 2, "head_dim": 8},
        "variants": {"backend": "math", "kv_cache": "static"},
    }
    with pytest.raises(ValueError, match="makes no valid trial: kv_cache='static' cannot train"):
        spec_from_dict(config)
    # crossed with values valid elsewhere, the pair is left out (and says why)
    config["workload"]["phase"] = ["prefill", "train"]
    config["variants"]["kv_cache"] = ["none", "static"]
    spec = spec_from_dict(config)
    assert len(spec.trials()) == 3
    (left,) = spec.left_out()
    assert left.workload_spec["phase"] == "train" and "cannot train" in left.invalid


def _memory(backend, seq):
    shape = dict(batch=1, heads_q=4, seq_kv=seq, head_dim=64)
    res = _train(backend, "causal", settings=MeasureSettings(warmup=0, repeats=1), **shape)
    assert res.ok, res.reason
    return res


def test_math_backward_memory_grows_as_s_squared_flash_as_s():
    math_small, math_large = _memory("math", 256), _memory("math", 1024)
    flash_small, flash_large = _memory("flash", 256), _memory("flash", 1024)
    # 4x the tokens: the math backend keeps [S, S] probabilities for its backward (16x), the
    # flash kernel its output and log-sum-exp (4x)
    assert math_large.saved_mem_bytes / math_small.saved_mem_bytes > 10
    assert math_large.peak_mem_bytes / math_small.peak_mem_bytes > 10
    assert flash_large.saved_mem_bytes / flash_small.saved_mem_bytes < 5
    assert flash_large.peak_mem_bytes / flash_small.peak_mem_bytes < 6
    assert flash_large.peak_mem_bytes < math_large.peak_mem_bytes / 3
    probs = 4 * 1024 * 1024 * 4  # [H, S, S] float32
    assert math_large.saved_mem_bytes >= probs


@pytest.mark.gpu
def test_flex_backward_memory_grows_as_s_on_a_gpu():
    def res(seq):
        wl = sl.Workload(
            phase="train", heads_q=8, seq_kv=seq, head_dim=64, dtype="bfloat16", device="cuda"
        )
        out = sl.measure(
            sl.Variant(backend="flex", mod="causal"), wl, MeasureSettings(warmup=1, repeats=3)
        )
        assert out.ok, out.reason
        return out

    small, large = res(2048), res(8192)
    assert large.peak_mem_bytes / small.peak_mem_bytes < 6
    assert large.grad_rel_err <= large.grad_tolerance


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["flex", "efficient", "math"])
def test_learned_bias_gradient_on_a_gpu(backend):
    wl = sl.Workload(phase="train", device="cuda", dtype="bfloat16", **AWKWARD)
    res = sl.measure(sl.Variant(backend=backend, mod="relative_bias"), wl, FAST)
    assert res.ok, res.reason
    assert res.dparam_rel_err is not None and res.grad_rel_err <= res.grad_tolerance


def test_time_steps_gives_each_step_and_their_sum():
    calls = []
    fwd, bwd, total = time_steps(
        [lambda: calls.append("f"), lambda: calls.append("b")],
        device="cpu",
        warmup=1,
        repeats=4,
        setup=lambda: calls.append("s"),
    )
    assert calls == ["s", "f", "b"] * 5
    assert fwd.latency_n == bwd.latency_n == total.latency_n == 4
    assert total.latency_ms >= max(fwd.latency_ms, bwd.latency_ms)


def test_performance_analysis_times_the_backward():
    q, k, v = (torch.randn(1, 2, 128, 32, requires_grad=True) for _ in range(3))
    pa = PerformanceAnalysis(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        (q, k, v),
        backward=True,
        name="sdpa",
    )
    steps = pa.benchmark_steps(warmup=1, repeats=3)
    assert set(steps) == {"forward", "backward", "total"}
    assert pa.benchmark(warmup=0, repeats=2).latency_n == 2
    assert pa.memory().peak_mem_bytes > 0
    assert q.grad is None  # dropped after measuring
    with pytest.raises(ValueError, match="requires grad"):
        PerformanceAnalysis(torch.add, (torch.ones(2), torch.ones(2)), backward=True)


def test_recommendation_is_for_training():
    results = [_train(b, "causal") for b in ("math", "flash", "eager")]
    rec = recommend(results)
    assert rec.summary().startswith("recommended for training (latency)")
    assert "grad err" in rec.summary() and rec.to_dict()["for_training"]


def test_preset_train_masks_loads_with_every_mask():
    spec = load_spec("train-masks")
    trials = spec.trials()
    assert trials and all(t.workload.phase == "train" for t in trials)
    assert {t.variant.mod for t in trials} == {"causal", "sliding_window", "document"}
    assert {t.workload.dtype for t in trials} == {"float32"}  # this machine has no GPU


@pytest.mark.slow  # a whole sweep
def test_train_sweep_from_a_config_through_the_cli(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(
        "name: train-cli\ndevice: cpu\n"
        "workload: {phase: train, batch: 1, heads_q: 2, seq_kv: 33, head_dim: 16}\n"
        "variants: {backend: [math, eager], mod: [causal, relative_bias]}\n"
        "measure: {warmup: 0, repeats: 2}\n"
    )
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "sweep", config, "--out", out)
    assert code == 0, err
    assert len(re.findall(r"= [\d.]+ \+ [\d.]+", stdout)) == 4  # each cell: total = fwd + bwd
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    for row in rows:
        assert row["wl_phase"] == "train"
        assert float(row["latency_fwd_ms"]) > 0 and float(row["latency_bwd_ms"]) > 0
        assert float(row["grad_rel_err"]) <= float(row["grad_tolerance"])
        assert int(row["saved_mem_bytes"]) > 0
        assert bool(row["dparam_rel_err"]) == ("relative_bias" in row["label"])
    code, stdout, err = run_cli(capsys, "pareto", out)
    assert code == 0, err
    assert "for training" in stdout
