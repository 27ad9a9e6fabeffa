"""``sdpalab sweep --dry-run``: the trials a config makes and how long they would take, with
nothing run and nothing written (issue 19, item 6)."""

import pytest

from cli_runner import run_cli
from sdpalab.explore.estimate import estimate_sweep
from sdpalab.spec.config import load_spec, spec_from_dict


@pytest.fixture
def nothing_runs(monkeypatch):
    import sdpalab.explore.grid as grid
    import sdpalab.run.executor as executor

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run ran something")

    monkeypatch.setattr(grid, "sweep", refuse)
    monkeypatch.setattr(executor, "run_trials", refuse, raising=False)
    monkeypatch.setattr(executor.WorkerPool, "__init__", refuse)


def test_dry_run_lists_the_trials_and_an_estimate_and_writes_nothing(
    tmp_path, capsys, nothing_runs, monkeypatch
):
    from sdpalab.cli_common import console

    monkeypatch.setattr(console, "width", 100)
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "sweep", "quick", "--dry-run", "--out", out)
    assert code == 0, err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    text = " ".join(stdout.split())
    n = len(load_spec("quick").trials())
    assert f"quick: {n} trials" in text
    for label in ("eager/sliding_window(window=128)", "math/static+int4", "flash/causal"):
        assert label in text
    assert "S=256" in text and "S=4096" in text  # the shapes are the columns
    assert "estimate: about" in text and "nothing was run" in text


def test_dry_run_of_a_bad_config_is_bad_input(tmp_path, capsys, nothing_runs):
    code, _, err = run_cli(capsys, "sweep", tmp_path / "missing.yaml", "--dry-run")
    assert code == 2 and "no such file or preset" in err and err.count("\n") == 1


def spec(seqs, backends=("math",), **measure):
    return spec_from_dict(
        {
            "name": "est",
            "device": "cpu",
            "workload": {"seq_kv": list(seqs), "heads_q": 8, "head_dim": 64},
            "variants": {"backend": list(backends)},
            "measure": {"warmup": 2, "repeats": 10, **measure},
        }
    )


def test_the_estimate_grows_with_the_work_and_shrinks_with_workers():
    small, big = estimate_sweep(spec([256])), estimate_sweep(spec([4096]))
    assert 0 < small.total_s < big.total_s
    (trial,) = big.trials
    # a quadratic kernel at 16x the length does at least 100x the work of one call
    assert big.seconds[trial.trial_id] > 50 * small.seconds[small.trials[0].trial_id]
    assert estimate_sweep(spec([4096], repeats=100)).total_s > big.total_s
    many = spec([256, 512, 1024, 2048], backends=("math", "eager"))
    one, two = estimate_sweep(many), estimate_sweep(many, workers=2)
    assert two.total_s < one.total_s and two.workers == 2
    assert one.basis  # says what the estimate rests on
