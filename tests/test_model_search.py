"""A model as the workload: ``sdpalab search`` and ``pareto`` end to end on the tiny Llama
(the engine's worker processes run it, teacher-forced through each cache), and bad model
configs."""

import pytest

from cli_runner import run_cli
from sdpalab.run.rundir import ResultStore
from sdpalab.spec import ModelWorkload
from sdpalab.spec.config import list_presets, load_spec

pytest.importorskip("transformers")
pytest.importorskip("optuna")

CONFIG = """\
name: model-search
device: cpu
workload: {model: tiny-llama, prompt_len: 32, new_tokens: 8, batch: 1, dtype: float32}
variants: {backend: [math, eager], kv_cache: [dynamic, static], kv_quant: [none, int8]}
measure: {warmup: 1, timeout_s: 120}
"""


def test_model_config_expands_to_model_trials(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text(CONFIG)
    trials = load_spec(path).trials()
    assert len(trials) == 8 and not any(t.unsupported for t in trials)
    assert all(isinstance(t.workload, ModelWorkload) for t in trials)
    assert trials[0].workload_spec == {
        "model": "tiny-llama",
        "text": None,
        "prompt_len": 32,
        "new_tokens": 8,
        "batch": 1,
        "dtype": "float32",
        "device": "cpu",
    }
    assert [t.trial_id for t in trials] == [t.trial_id for t in load_spec(path).trials()]
    assert len({t.trial_id for t in trials}) == 8
    assert "model-tiny" in {name for name, _ in list_presets()}
    assert len(load_spec("model-tiny").trials()) == 24


@pytest.mark.slow  # the engine's worker processes load and run the model
def test_search_and_pareto_on_a_model(tmp_path, monkeypatch, capsys):
    path, out = tmp_path / "model.yaml", tmp_path / "run"
    path.write_text(CONFIG)
    code, _, err = run_cli(capsys, "search", path, "--out", out, "--trials", 4)
    assert code == 0, err
    with ResultStore(out) as store:
        results = store.results()
    assert len(results) == 4
    for res in results:
        assert res.status == "ok", res.reason
        assert res.workload["model"] == "tiny-llama" and res.workload["prompt_len"] == 32
        assert res.latency_ms > 0 and res.kv_cache_bytes > 0
        assert res.peak_mem_total_bytes > res.peak_mem_bytes > 0
        assert res.kernel == res.variant["backend"]
    exact = [r.rel_fro_err for r in results if r.variant["kv_quant"] == "none"]
    int8 = [r.rel_fro_err for r in results if r.variant["kv_quant"] == "int8"]
    assert exact and int8  # the seeded sampler proposes both
    assert max(exact) < 1e-4 < min(int8)
    int8_bytes = [r.kv_cache_bytes for r in results if r.variant["kv_quant"] == "int8"]
    exact_bytes = [r.kv_cache_bytes for r in results if r.variant["kv_quant"] == "none"]
    assert max(int8_bytes) < min(exact_bytes)
    code, stdout, err = run_cli(capsys, "pareto", out)
    assert code == 0, err
    assert "recommended" in stdout


@pytest.mark.parametrize(
    ("workload", "names"),
    [
        ("{model: no-such-model, prompt_len: 32}", "workload.model: 'no-such-model' is neither"),
        ("{model: tiny-llama, seq_kv: 32}", "workload.seq_kv: not a key of a model workload"),
        ("{prompt_len: 32}", "workload.prompt_len: needs workload.model"),
    ],
)
def test_bad_model_config_exits_2_with_one_line(workload, names, tmp_path, monkeypatch, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\nworkload: {workload}\nvariants: {{backend: math}}\n")
    code, _, err = run_cli(capsys, "search", path, "--out", tmp_path / "run", "--trials", 2)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), err
    assert names in lines[0], lines[0]
    assert not (tmp_path / "run").exists()
