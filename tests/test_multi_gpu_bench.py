"""``benchmarks/multi_gpu_bench.py`` on the CPU (two worker processes standing in for two GPUs):
every step runs and the report says what a multi-GPU host would be judged on."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "multi_gpu_bench.py"
CONFIG = """
name: tiny-cpu
device: cpu
workload: {phase: prefill, batch: 1, heads_q: 2, head_dim: 16, dtype: float32, seq_kv: [32, 64]}
variants: {backend: [math, eager], mod: [none, causal]}
measure: {warmup: 0, repeats: 3, timeout_s: 60}
"""


def _bench():
    spec = importlib.util.spec_from_file_location("multi_gpu_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["multi_gpu_bench"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # three sweeps and two searches in worker processes
def test_the_bench_runs_its_steps_on_the_cpu(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "multi-gpu.md"
    argv = ["--device", "cpu", "--gpus", "2", "--sweep", str(config), "--search", str(config),
            "--trials", "4", "--no-ray", "--out", str(out)]  # fmt: skip
    assert _bench().main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(s["name"], s["workers"], s["trials"]) for s in summary["sweeps"]] == [
        ("local", 1, 8),
        ("local", 2, 8),
    ]
    assert summary["checks"]["local x2"]["status_differs"] == []
    assert [len(curve) for curve in summary["search"].values()] == [4, 4]
    text = out.read_text()
    assert "## Sweep" in text and "<= 0.650" in text and "hypervolume" in text


def test_one_gpu_is_refused_with_exit_2(capsys):
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has several GPUs")
    assert _bench().main(["--device", "cuda"]) == 2
    assert "needs 2 or more GPUs" in capsys.readouterr().err
