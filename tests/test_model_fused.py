"""A cache that attends itself inside a model: ``SdpalabCache`` with ``backend triton_qdecode``
runs the fused kernel for decode steps (here under Triton's interpreter on the CPU) and must give
the capture path's logits, format by format, and the stock model's tokens when exact."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("triton")

import sdpalab as sl
from sdpalab.models.attention import apply_variant
from sdpalab.models.cache import SdpalabCache
from sdpalab.models.loading import load_model

PROMPT, STEPS = 40, 6
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU runs the interpreter


@pytest.fixture(scope="module")
def tiny():
    loaded = load_model("tiny-llama", device=DEVICE)
    ids = torch.randint(0, 1000, (2, PROMPT + STEPS), generator=torch.Generator().manual_seed(1))
    ids = ids.to(DEVICE)
    return loaded.model, ids


def forced_logits(model, variant, ids):
    """Prefill ``PROMPT`` tokens, then feed the rest one decode step at a time."""
    apply_variant(model, variant)
    cache = SdpalabCache(variant, max_cache_len=ids.shape[1])
    out = []
    with torch.inference_mode():
        out.append(model(ids[:, :PROMPT], past_key_values=cache).logits[:, -1])
        for t in range(PROMPT, ids.shape[1] - 1):
            out.append(model(ids[:, t : t + 1], past_key_values=cache).logits[:, -1])
    return torch.stack(out, 1), cache


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kv_cache", "kv_quant"),
    [("static", "none"), ("static", "int8"), ("static", "int4"), ("dynamic", "kivi4")],
)
def test_the_fused_path_gives_the_capture_paths_logits(tiny, kv_cache, kv_quant, monkeypatch):
    from sdpalab.attention.kernels.qdecode import QDecodeAttend

    model, ids = tiny
    launches = []
    fused_call = QDecodeAttend.attend_quantized

    def counted(self, q, *args):
        launches.append(q.shape[2])
        return fused_call(self, q, *args)

    monkeypatch.setattr(QDecodeAttend, "attend_quantized", counted)
    args = {"group_size": 16} if kv_quant == "kivi4" else {}
    fused = sl.Variant(backend="triton_qdecode", kv_cache=kv_cache, kv_quant=kv_quant, kv_args=args)
    capture = sl.Variant(backend="math", kv_cache=kv_cache, kv_quant=kv_quant, kv_args=args)
    got, cache = forced_logits(model, fused, ids)
    want, reference = forced_logits(model, capture, ids)
    assert cache.get_seq_length() == reference.get_seq_length() == ids.shape[1] - 1
    assert cache.cache_bytes() == reference.cache_bytes()
    err = (got - want).norm() / want.norm()
    assert err < 1e-5, f"{kv_quant}: relative logits error {err:.2e}"
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    # every decode step of every layer through the fused kernel, the prefill never
    steps = (STEPS - 1) * model.config.num_hidden_layers
    assert launches == ([] if kv_quant == "none" else [1] * steps)


def test_a_cache_that_attends_itself_refuses_another_attention(tiny):
    model, ids = tiny
    variant = sl.Variant(backend="triton_qdecode", kv_cache="static", kv_quant="int8")
    model.set_attn_implementation("sdpa")  # stock attention: never calls the layer back
    cache = SdpalabCache(variant, max_cache_len=ids.shape[1])
    with torch.inference_mode():
        model(ids[:, :8], past_key_values=cache)
        with pytest.raises(RuntimeError, match="apply_variant"):
            model(ids[:, 8:9], past_key_values=cache)


def model_trial(variant, device):
    from sdpalab.run.model_trial import measure_model

    workload = sl.ModelWorkload(model="tiny-llama", prompt_len=24, new_tokens=4, device=device)
    return measure_model(variant, workload, sl.MeasureSettings(warmup=1, repeats=3))


def test_model_trials_on_a_cpu_time_each_step_by_the_clock():
    result = model_trial(sl.Variant(backend="math", kv_cache="static"), "cpu")
    assert result.ok and result.latency_ms > 0 and result.timing_method == "cpu_clock"


@pytest.mark.gpu
def test_a_static_cache_step_is_replayed_from_a_graph_on_a_gpu():
    fused = sl.Variant(backend="triton_qdecode", kv_cache="static", kv_quant="int8")
    result = model_trial(fused, "cuda")
    assert result.ok and result.latency_ms > 0, result.reason
    assert result.timing_method == "cuda_graph"
    # the tiny model runs in float32 with grouped KV heads: flash refuses float32 and
    # efficient grouped heads, math takes both
    dynamic = model_trial(sl.Variant(backend="math", kv_cache="dynamic"), "cuda")
    assert dynamic.ok, dynamic.reason
    assert dynamic.timing_method.startswith("cuda_events (eager steps")
