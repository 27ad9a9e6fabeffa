"""Captured activations as a workload: ``sdpalab capture`` on the tiny Llama (seeded random
weights, GQA 8:2, head_dim 32, float32 on the CPU), the trace file, and variants measured on it
(``TraceWorkload``, a sweep config's ``workload: {trace: FILE, layers: [...]}``)."""

import math

import pytest
import torch

pytest.importorskip("transformers")

import sdpalab as sl
from cli_runner import run_cli
from sdpalab.attention.reference import attention_ref
from sdpalab.measure.accuracy import compare, tolerance
from sdpalab.models.capture import capture
from sdpalab.models.loading import load_model
from sdpalab.models.text import load_text
from sdpalab.report.tables import group_tables
from sdpalab.run.trace_compare import compare_to_gaussian
from sdpalab.run.worker import run_one
from sdpalab.spec import MeasureSettings, TraceWorkload, Variant
from sdpalab.spec.config import spec_from_dict
from sdpalab.spec.trace import load_layer, read_trace

TOKENS, LAYERS = 96, (0, 3)
FAST = MeasureSettings(warmup=0, repeats=2, memory=False)


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "tiny.safetensors"
    capture("tiny-llama", path, layers=LAYERS, tokens=TOKENS, device="cpu")
    return path


def test_captured_layers_reproduce_the_models_own_attention(trace):
    # The stock model (sdpa, no recording function) on the same tokens: what each layer's
    # o_proj receives is its attention output, [B, S, H_q * D].
    model = load_model("tiny-llama").model
    model.set_attn_implementation("sdpa")
    ids = torch.tensor([list(load_text().text.encode("utf-8")[:TOKENS])])
    seen = {}
    for layer in LAYERS:
        o_proj = model.model.layers[layer].self_attn.o_proj
        o_proj.register_forward_pre_hook(lambda m, args, i=layer: seen.__setitem__(i, args[0]))
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False)

    limit = tolerance(torch.float32, kv_len=TOKENS)
    for layer in LAYERS:
        parts = load_layer(trace, layer)
        q, k, v, out = (parts[p] for p in ("q", "k", "v", "out"))
        assert q.shape == out.shape == (1, 8, TOKENS, 32) and k.shape == v.shape == (
            1,
            2,
            TOKENS,
            32,
        )
        stock = seen[layer].view(1, TOKENS, 8, 32).transpose(1, 2)
        torch.testing.assert_close(out, stock, rtol=0, atol=0)  # recording changes nothing
        # the float64 oracle of the recorded q, k, v under the recorded (causal) mask
        assert read_trace(trace).mask(layer) == ("causal", {})
        error = compare(out, attention_ref(q, k, v, "causal")).rel_fro_err
        assert error < limit, (layer, error, limit)


def test_trace_metadata_says_what_was_captured(trace):
    meta = read_trace(trace).meta
    assert meta["model"] == "tiny-llama" and meta["layers"] == list(LAYERS)
    assert meta["positions"] == [0, TOKENS] and meta["tokens"] == TOKENS
    assert meta["dtype"] == "float32" and meta["sdpalab_version"]
    assert meta["text"]["source"] == "pydoc_data.topics"
    assert meta["text"]["sha256"] == load_text().sha256
    assert meta["text"]["tokenizer"] == "utf-8 bytes"  # tiny-llama has no tokenizer
    assert all(meta["check"][str(i)] < 1e-5 for i in LAYERS)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_measure_on_a_trace_is_ok_within_tolerance_for_an_exact_backend(trace, phase):
    workload = TraceWorkload(trace=str(trace), layer=3, phase=phase)
    for variant in (Variant(backend="math"), Variant(backend="math", kv_cache="static")):
        res = sl.measure(variant, workload, FAST)
        assert res.status == "ok", res.reason
        assert res.rel_fro_err < res.tolerance == tolerance(torch.float32)
        assert res.latency_ms > 0
        # the Result says it was a trace, and the shapes it ran at
        assert res.workload["trace"] == str(trace) and res.workload["layer"] == 3
        assert res.workload["seq_kv"] == TOKENS and res.workload["heads_kv"] == 2
        assert res.workload["seq_q"] == (TOKENS if phase == "prefill" else 1)


def test_a_trace_workload_names_a_real_file_and_layer(trace, tmp_path):
    with pytest.raises(ValueError, match=r"layer=2 is not in trace .*; valid: 0, 3"):
        TraceWorkload(trace=str(trace), layer=2)
    with pytest.raises(ValueError, match="does not exist; write one with: sdpalab capture"):
        TraceWorkload(trace=str(tmp_path / "nope.safetensors"), layer=0)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a trace at all")
    with pytest.raises(ValueError, match="is not an sdpalab trace"):
        TraceWorkload(trace=str(junk), layer=0)


def test_a_trace_captured_again_at_the_same_path_is_another_trial(trace, tmp_path):
    """Trial ids key on the trace's bytes, not its path: results of the old capture are not
    taken for the new one's (a resumed run would otherwise skip it)."""
    from sdpalab.spec import trial_id

    path = tmp_path / "again.safetensors"
    path.write_bytes(trace.read_bytes())
    variant = Variant(backend="math")
    before = trial_id(variant, TraceWorkload(trace=str(path), layer=0))
    assert before == trial_id(variant, TraceWorkload(trace=str(path), layer=0))
    capture("tiny-llama", path, layers=LAYERS, tokens=TOKENS, device="cpu", seed=1, force=True)
    after = TraceWorkload(trace=str(path), layer=0)
    assert after.to_dict()["trace_sha256"] != read_trace(trace).digest
    assert trial_id(variant, after) != before


def test_a_sweep_config_on_a_trace_runs_one_trial_per_layer(trace):
    config = {
        "name": "t",
        "device": "cpu",
        "workload": {"trace": str(trace), "layers": list(LAYERS)},
        "variants": {"backend": "math", "kv_cache": "static", "kv_quant": ["none", "int8"]},
        "measure": {"warmup": 0, "repeats": 2, "memory": False},
    }
    spec = spec_from_dict(config)
    trials = spec.trials()
    assert sorted((t.workload.layer, t.variant.kv_quant) for t in trials) == [
        (0, "int8"),
        (0, "none"),
        (3, "int8"),
        (3, "none"),
    ]
    assert spec_from_dict(spec.to_dict()).trials() == trials  # run.json reads back
    # through the worker's dispatch, as the executor sends each trial
    results = [
        sl.Result.from_dict(
            run_one(
                {
                    "trial_id": t.trial_id,
                    "variant": t.variant_spec,
                    "workload": t.workload_spec,
                    "settings": t.settings.to_dict(),
                }
            )
        )
        for t in trials
    ]
    for res in results:
        assert res.status == "ok", res.reason
        exact = res.variant["kv_quant"] == "none"
        assert (res.rel_fro_err < res.tolerance) == exact
    # one table for the trace, its layers as columns (they share every other size)
    (table,) = group_tables(results)
    assert str(trace) in table.title and table.columns == ["L=0", "L=3"]


def test_omitted_layers_mean_every_layer_of_the_trace(trace):
    spec = spec_from_dict({"name": "t", "device": "cpu", "workload": {"trace": str(trace)}})
    assert sorted(t.workload.layer for t in spec.trials()) == list(LAYERS)


@pytest.mark.parametrize(
    ("workload", "names"),
    [
        ("{trace: TRACE, layers: [0, 7]}", "workload.layers: layer 7 is not in trace"),
        ("{trace: MISSING, layers: 0}", "workload.trace: trace '"),
        ("{trace: TRACE, seq_kv: 64}", "workload.seq_kv: not a key of a trace workload"),
        ("{layers: [0]}", "workload.layers: needs workload.trace"),
        ("{trace: TRACE, layers: -1}", "workload.layers: -1 must be a non-negative"),
    ],
)
def test_bad_trace_config_exits_2_with_one_line(
    trace, workload, names, tmp_path, monkeypatch, capsys
):
    path = tmp_path / "bad.yaml"
    text = workload.replace("TRACE", str(trace)).replace("MISSING", str(tmp_path / "no.st"))
    path.write_text(f"name: bad\ndevice: cpu\nworkload: {text}\nvariants: {{backend: math}}\n")
    code, _, err = run_cli(capsys, "sweep", path, "--out", tmp_path / "run")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), err
    assert names in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


def test_capture_cli_needs_force_to_replace_a_file(tmp_path, monkeypatch, capsys):
    out = tmp_path / "t.safetensors"
    out.write_bytes(b"precious")
    args = (
        "capture",
        "tiny-llama",
        "--out",
        out,
        "--tokens",
        32,
        "--layers",
        "1",
        "--device",
        "cpu",
    )
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "exists; pass --force" in err and out.read_bytes() == b"precious"

    code, stdout, err = run_cli(capsys, *args, "--force")
    assert code == 0, err
    assert read_trace(out).layers == (1,) and "layers: [1]" in stdout


@pytest.mark.parametrize(
    ("layers", "names"),
    [("0,4", "layer 4 is out of range; valid: 0-3"), ("0,x", "--layers '0,x'")],
)
def test_capture_cli_bad_layers_exit_2_naming_the_range(
    layers, names, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "t.safetensors"
    code, _, err = run_cli(capsys, "capture", "tiny-llama", "--out", out, "--layers", layers)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert names in err and not out.exists()


def test_real_and_gaussian_errors_side_by_side(trace):
    variants = (
        Variant(backend="math", kv_cache="static"),
        Variant(backend="math", kv_cache="static", kv_quant="int8"),
    )
    rows = compare_to_gaussian(trace, layers=[0], variants=variants)
    assert [(r.layer, r.label) for r in rows] == [(0, "math/static"), (0, "math/static+int8")]
    exact, int8 = rows
    for res in (exact.real, exact.gaussian, int8.real, int8.gaussian):
        assert res.status == "ok", res.reason
    assert "trace" in exact.real.workload and "trace" not in exact.gaussian.workload
    # same shapes on both sides; only the tensors differ
    sizes = ("batch", "heads_q", "heads_kv", "seq_q", "seq_kv", "head_dim")
    assert {k: exact.real.workload[k] for k in sizes} == {
        k: exact.gaussian.workload[k] for k in sizes
    }
    assert max(exact.real.rel_fro_err, exact.gaussian.rel_fro_err) < tolerance(torch.float32)
    assert min(int8.real.rel_fro_err, int8.gaussian.rel_fro_err) > 1e-4
    assert math.isfinite(int8.real.rel_fro_err / int8.gaussian.rel_fro_err)


def test_a_sliding_window_layer_is_captured_and_measured_with_its_window(tmp_path):
    # A small Mistral (random weights from a config) whose layers attend a window of 16 keys:
    # 48 tokens, so the window cuts most rows.
    config = tmp_path / "config.json"
    config.write_text(
        '{"model_type": "mistral", "architectures": ["MistralForCausalLM"], "hidden_size": 64, '
        '"intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, '
        '"num_key_value_heads": 2, "head_dim": 16, "vocab_size": 300, "sliding_window": 16}'
    )
    path = tmp_path / "mistral.safetensors"
    capture(str(config), path, layers=[1], tokens=48, device="cpu")
    assert read_trace(path).mask(1) == ("sliding_window", {"window": 16})
    parts = load_layer(path, 1)
    q, k, v, out = (parts[p] for p in ("q", "k", "v", "out"))
    windowed = attention_ref(q, k, v, "sliding_window", {"window": 16})
    assert compare(out, windowed).rel_fro_err < tolerance(torch.float32)
    assert compare(out, attention_ref(q, k, v, "causal")).rel_fro_err > 1e-2  # the window counts
    # mod none runs the layer's window, as in the model; plain causal is an approximation
    workload = TraceWorkload(trace=str(path), layer=1)
    exact = sl.measure(Variant(backend="math"), workload, FAST)
    assert exact.status == "ok" and exact.rel_fro_err < exact.tolerance
    causal = sl.measure(Variant(backend="math", mod="causal"), workload, FAST)
    assert causal.status == "ok" and causal.rel_fro_err > 1e-2
