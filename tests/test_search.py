"""The Optuna search: against the exhaustive grid, under constraints, resumed, with failures.

``test_search_against_the_grid`` runs the real engine (worker processes, the store) on a space
small enough to grid on the CPU; the others replay constructed Results through ``runner=`` so
that they can check the sampler-facing behaviour exactly and in a second or two.
"""

import itertools
import math
import sqlite3
import warnings

import numpy as np
import pytest

from sdpalab.explore.grid import sweep
from sdpalab.explore.pareto import hypervolume, pareto
from sdpalab.explore.recommend import recommend
from sdpalab.explore.search import JOURNAL, SearchResult, make_sampler, search
from sdpalab.explore.space import trial_constraints
from sdpalab.measure.result import Result
from sdpalab.spec import Constraints
from sdpalab.spec.config import spec_from_dict

optuna = pytest.importorskip("optuna")

OBJ = ("latency_ms", "peak_mem_total_bytes", "rel_fro_err")


def tiny_spec(backends, **extra):
    return spec_from_dict(
        {
            "name": "tiny",
            "device": "cpu",
            "workload": {
                "phase": "prefill",
                "batch": 1,
                "heads_q": 2,
                "heads_kv": 1,
                "seq_kv": [32, 64],
                "head_dim": 16,
                "dtype": "float32",
            },
            "variants": {"backend": backends, "mod": ["none", "causal"]},
            "measure": {"warmup": 1, "repeats": 3, "timeout_s": 60},
            **extra,
        }
    )


def ids_in_store(out):
    with sqlite3.connect(out / "results.sqlite") as db:
        return [row[0] for row in db.execute("SELECT trial_id FROM trials")]


@pytest.mark.slow
def test_search_against_the_grid(tmp_path, fault_backends):  # fault_wrong: zeros, error 1.0
    """Real engine: search 6, resume for 4 more, then the grid fills the rest of the same store."""
    spec = tiny_spec(["math", "eager", "flash", "fault_wrong"], constraints={"max_error": 1e-3})
    grid_size = len(spec.trials())
    assert grid_size == 16
    out = tmp_path / "run"
    first_ids = []
    first = search(
        spec, out, trials=6, seed=1, on_result=lambda r, n, t: first_ids.append(r.trial_id)
    )
    assert first.measured == 6 and len(first_ids) == 6 and len(set(first_ids)) == 6
    assert sorted(ids_in_store(out)) == sorted(first_ids)
    assert (out / JOURNAL).exists() and (out / "results.csv").exists()

    second_ids = []
    second = search(
        spec,
        out,
        trials=4,
        seed=1,
        resume=True,
        on_result=lambda r, n, t: second_ids.append(r.trial_id),
    )
    assert second.measured == 4 and not set(second_ids) & set(first_ids)  # nothing repeated
    assert len(ids_in_store(out)) == 10
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / JOURNAL))
    )
    studies = [optuna.load_study(study_name=n, storage=storage) for n in second.study_names]
    told = [t for s in studies for t in s.trials if t.user_attrs.get("source") == "measured"]
    assert len(told) == 10  # each measurement told once, across both calls
    numbers = [t.number for s in studies for t in s.trials]
    # every trial asked was told; a point handed to a study that kept repeating itself may
    # wait for the next call (the budget ran out first)
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING)
    assert all(t.state in done for s in studies for t in s.trials)
    assert sum(t.state == done[1] for s in studies for t in s.trials) <= len(studies)
    assert len(numbers) >= 10

    # the exhaustive grid, in the same store: only the 6 points the search did not measure run
    stored_before = {r.trial_id: r.latency_ms for r in second.results}
    grid = sweep(spec, out, resume=True)
    assert len(grid.results) == grid_size and len(ids_in_store(out)) == grid_size
    assert all(
        r.latency_ms == stored_before[r.trial_id]
        for r in grid.results
        if r.trial_id in stored_before
    )
    check_front_against_grid(second, grid.results, spec)

    # the fast-but-wrong kernel is on the unconstrained front (fastest, leanest) but never
    # recommended, whatever the priority, with or without an error budget
    wrong = [r for r in grid.results if r.variant["backend"] == "fault_wrong"]
    assert all(r.ok and r.rel_fro_err > 0.5 for r in wrong)
    assert any(r in pareto(grid.results) for r in wrong)
    for priority in ("latency", "memory", "error", "balanced"):
        for limit in (Constraints(), Constraints(max_error=1e-3)):
            rec = recommend(
                grid.results,
                priority=priority,
                context={"seq_kv": 64, "mod": "causal"},  # each mask its own front
                constraints=limit,
            )
            assert rec.best.variant["backend"] != "fault_wrong"
            assert rec.runner_up is None or rec.runner_up.variant["backend"] != "fault_wrong"
            assert rec.best.rel_fro_err <= (limit.max_error or rec.best.tolerance)
    # the search's own recommendation meets its limits
    rec = second.recommend("latency", context={"seq_kv": 64, "mod": "causal"})
    assert rec.best.ok and rec.best.rel_fro_err <= 1e-3


def check_front_against_grid(found: SearchResult, grid: list[Result], spec) -> None:
    """Every grid-front point the search measured is on the search's front, and every point of
    the search's front that is off the grid's front is beaten only by a point it never saw."""
    limits = spec.constraints
    grid_front = {r.trial_id for r in pareto(grid, OBJ, constraints=limits)}
    seen = {r.trial_id for r in found.results}
    search_front = {r.trial_id for r in found.front()}
    assert search_front and grid_front & seen <= search_front
    by_id = {r.trial_id: r for r in grid}
    for tid in search_front - grid_front:
        beaters = [
            g
            for g in grid
            if g.trial_id != tid and pareto([by_id[tid], g], OBJ, constraints=limits) == [g]
        ]
        assert beaters and not {g.trial_id for g in beaters} & seen


# --------------------------------------------------------------------------- replayed spaces


BACKENDS = ["math", "eager", "flash"]
MODS = ["none", "causal", {"sliding_window": {"window": 16}}, {"sliding_window": {"window": 64}}]


def replay_spec(seqs=(128, 512), dtypes=("float32", "bfloat16"), meant=None, **extra):
    """``meant``: the mask the workload names (the others are approximations of it)."""
    return spec_from_dict(
        {
            "name": "replay",
            "device": "cpu",
            "workload": {
                "phase": "prefill",
                "batch": 1,
                "heads_q": 4,
                "heads_kv": 4,
                "seq_kv": list(seqs),
                "head_dim": 32,
                "dtype": list(dtypes),
                **({"mod": meant} if meant else {}),
            },
            "variants": {"backend": BACKENDS, "mod": MODS},
            "measure": {"warmup": 1, "repeats": 3},
            **extra,
        }
    )


def physical(trial, rng):
    """A Result that behaves like the physics: work ∝ unmasked fraction, memory ∝ S² for the
    kernels that materialize scores, bf16 faster with 1e4x the error."""
    wl, var = trial.workload_spec, trial.variant_spec
    s = wl["seq_kv"]
    frac = {"none": 1.0, "causal": 0.5}.get(var["mod"])
    if frac is None:
        frac = min(1.0, var["mod_args"]["window"] / s)
    speed = {"math": 1.0, "eager": 1.3, "flash": 0.6}[var["backend"]]
    bf16 = wl["dtype"] == "bfloat16"
    lat = 1e-5 * s * s * speed * (frac if var["backend"] == "flash" else 1.0)
    lat *= (0.6 if bf16 else 1.0) * rng.uniform(0.97, 1.03)
    scores = 0 if var["backend"] == "flash" else s * s * 4 * 4 * (0.5 if bf16 else 1)
    mem = 3 * s * 32 * 4 * 4 + scores + (s * s if var["mod"] != "none" else 0)
    err = (3e-3 if bf16 else 2e-7) * {"math": 1.0, "eager": 1.4, "flash": 0.8}[var["backend"]]
    return trial.result(
        "ok",
        "",
        latency_ms=lat,
        latency_iqr_ms=lat * 0.005,
        peak_mem_bytes=int(mem),
        peak_mem_total_bytes=int(mem),
        rel_fro_err=err,
        tolerance=2e-2 if bf16 else 1.1e-5,
    )


def replayer(spec, make=physical, seed=0):
    rng = np.random.default_rng(seed)
    table = {t.trial_id: make(t, rng) for t in spec.trials()}
    calls = []

    def run(trials):
        calls.extend(t.trial_id for t in trials)
        return [table[t.trial_id] for t in trials]

    run.table, run.calls = table, calls
    return run


def log_hv(results, ref_from):
    pts = np.log10(
        [[r.latency_ms, r.peak_mem_total_bytes, max(r.rel_fro_err, 1e-12)] for r in results]
    )
    ref = (
        np.log10(
            [[r.latency_ms, r.peak_mem_total_bytes, max(r.rel_fro_err, 1e-12)] for r in ref_from]
        ).max(axis=0)
        + 0.1
    )
    return hypervolume(pts, ref)


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_search_front_matches_grid_when_exhaustive(tmp_path, sampler):
    # one space of 24 points: the masks approximate full attention, and may compete
    spec = replay_spec(seqs=(256,), meant="none", constraints={"allow_approximate": True})
    run = replayer(spec)
    grid = list(run.table.values())
    found = search(spec, tmp_path / sampler, trials=len(grid), sampler=sampler, runner=run)
    assert found.measured == len(grid) and len(set(run.calls)) == len(run.calls) == len(grid)
    front = pareto(grid, constraints=spec.constraints)
    assert {r.trial_id for r in found.front()} == {r.trial_id for r in front}
    # half the budget: the front it finds covers most of the grid front's hypervolume
    half = search(
        spec,
        tmp_path / f"{sampler}-half",
        trials=len(grid) // 2,
        sampler=sampler,
        runner=replayer(spec),
        seed=3,
    )
    assert half.measured == len(grid) // 2
    assert log_hv(half.front(), grid) >= 0.8 * log_hv(front, grid)


def test_gp_sampler_runs(tmp_path):
    # the GP refits at every ask (about a second each on a busy CPU): a short run only
    spec = replay_spec(seqs=(256,))
    run = replayer(spec)
    found = search(spec, tmp_path, trials=6, sampler="gp", runner=run)
    assert found.measured == 6 == len(set(run.calls)) and found.front()


def test_constraints_reach_the_sampler_and_failures_are_told(tmp_path):
    def with_failures(trial, rng):
        if trial.variant_spec["backend"] == "eager" and trial.workload_spec["seq_kv"] == 128:
            return trial.result("oom", "out of memory (constructed)")
        return physical(trial, rng)

    small = replay_spec(seqs=(128,), constraints={"max_error": 1e-2})
    spec = replay_spec(constraints={"max_error": 1e-2})
    run = replayer(spec, with_failures)
    limits = Constraints(max_error=1e-2, max_memory=300 * 2**10)
    search(small, tmp_path, trials=len(small.trials()), runner=run, constraints=limits)
    assert len(run.calls) == len(small.trials())
    # the config grew (a longer shape): resuming it reuses the short shape's trials
    found = search(
        spec, tmp_path, trials=len(run.table), runner=run, constraints=limits, resume=True
    )
    assert found.constraints == limits
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / JOURNAL))
    )
    studies = [optuna.load_study(study_name=n, storage=storage) for n in found.study_names]
    trials = [t for study in studies for t in study.trials]
    # each study (a shape and the mask it means) is its own problem, on its own scale
    worst_ok = {
        id(t): max([u.values[0] for u in study.trials if u.user_attrs.get("status") == "ok"])
        for study in studies
        for t in study.trials
        if any(u.user_attrs.get("status") == "ok" for u in study.trials)
    }
    for t in trials:
        cons = t.user_attrs["constraints"]
        assert len(cons) == 3  # status, max_error, max_memory
        if trial_constraints():  # Optuna 5: the sampler reads what the trial set
            assert t.constraints == dict(
                zip(("status", "max_error", "max_memory"), cons, strict=True)
            )
        assert t.state == optuna.trial.TrialState.COMPLETE and all(map(math.isfinite, t.values))
        if t.user_attrs.get("status") == "ok":
            over = t.user_attrs["peak_mem_total_bytes"] > 300 * 2**10
            assert (cons[2] > 0) == over and cons[0] == 0
        else:  # failed or inferred: told, infeasible, and worse than its study's successes
            assert cons[0] > 0 and t.values[0] > worst_ok.get(id(t), -math.inf)
    # an oom at seq 128 means an oom at 512 (eager), and memory over the limit at 128 means
    # over it at 512 (math: S^2 scores): those points are told without running
    big = {tid: r for tid, r in run.table.items() if r.workload["seq_kv"] == 512}
    doomed = {tid for tid, r in big.items() if r.variant["backend"] != "flash"}
    assert found.inferred > 0 and not doomed & set(run.calls)
    assert found.measured == len(big) - len(doomed) and found.exhausted
    inferred = [t for t in trials if t.user_attrs.get("source") == "inferred"]
    assert {t.user_attrs["status"] for t in inferred} == {"oom", "infeasible"}
    # and the recommendation honours every limit
    for mask in ("none", "causal", "sliding_window(window=16)"):  # a front per mask
        rec = found.recommend("latency", context={"seq_kv": 128, "mod": mask})
        assert rec.best.peak_mem_total_bytes <= 300 * 2**10 and rec.best.rel_fro_err <= 1e-2


def test_samplers_are_made_without_deprecated_arguments():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # Optuna 5 deprecates constraints_func
        for name in ("nsga2", "tpe", "gp"):
            make_sampler(name, seed=0, budget=40)


def test_resume_extends_without_repeating(tmp_path):
    spec = replay_spec()
    run = replayer(spec)
    first = search(spec, tmp_path, trials=10, runner=run, seed=5)
    again = search(spec, tmp_path, trials=10, runner=run, seed=5, resume=True)
    assert first.measured == again.measured == 10
    assert len(run.calls) == len(set(run.calls)) == 20  # no point measured twice
    assert len(again.results) >= 20
    everything = search(spec, tmp_path, trials=1000, runner=run, resume=True)
    assert everything.exhausted and len(run.calls) == len(run.table) == len(set(run.calls))
    with pytest.raises(ValueError, match="nothing to resume"):
        search(spec, tmp_path / "new", trials=1, runner=run, resume=True)


def test_bad_input(tmp_path):
    spec = replay_spec()
    with pytest.raises(ValueError, match="sampler"):
        search(spec, tmp_path, trials=2, sampler="random", runner=replayer(spec))
    with pytest.raises(ValueError, match="--trials"):
        search(spec, tmp_path, trials=0, runner=replayer(spec))
    with pytest.raises(ValueError, match="max_memory=-1 must be"):
        search(
            spec, tmp_path, trials=2, constraints=Constraints(max_memory=-1), runner=replayer(spec)
        )
    search(spec, tmp_path, trials=2, runner=replayer(spec))
    changed = replay_spec(dtypes=("float32",))
    with pytest.raises(ValueError, match="already holds a run"):
        search(changed, tmp_path, trials=2, runner=replayer(changed))
    # a config that no longer holds the stored trials, or searches another space
    with pytest.raises(ValueError, match=r"another config|different space"):
        search(changed, tmp_path, trials=2, runner=replayer(changed), resume=True)


def test_space_axes():
    from sdpalab.explore.search import Space

    spec = spec_from_dict(
        {
            "name": "axes",
            "device": "cpu",
            "workload": {"phase": "decode", "seq_kv": [64, 128], "head_dim": 16, "heads_q": 2},
            "variants": {
                "backend": ["math", "eager"],
                "kv_cache": "static",
                "kv_quant": ["int4", "kivi4"],
                "kv_args": [{"group_size": 16}, {"group_size": 32}, {"group_size": 8}],
            },
        }
    )
    space = Space.from_trials(spec.trials())
    assert list(space.axes) == ["backend", "kv_args.group_size", "kv_quant"]
    assert space.axes["kv_args.group_size"] == (8, 16, 32)  # ordinal, sorted
    dist = space.distributions()
    assert isinstance(dist["kv_args.group_size (level)"], optuna.distributions.IntDistribution)
    assert len(space.contexts) == 2 and space.contexts[0]["seq_kv"] == 64
    assert len(space.table) == len(spec.trials())
    for _ctx, point in itertools.islice(space.table, 5):
        assert space.point_of(space.params_of(point)) == point


# --------------------------------------------------------------------------- CLI


def run_cli(monkeypatch, capsys, *args):
    import sys

    from sdpalab import cli

    monkeypatch.setattr(sys, "argv", ["sdpalab", *map(str, args)])
    with pytest.raises(SystemExit) as done:
        cli.main()
    out = capsys.readouterr()
    # rich wraps at the console's width: compare the text unwrapped
    return done.value.code, out.out.replace("\n", ""), out.err


@pytest.mark.slow
def test_cli_search_pareto_sensitivity(tmp_path, monkeypatch, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "name: tiny\ndevice: cpu\n"
        "workload: {phase: prefill, batch: 1, heads_q: 2, heads_kv: 1, seq_kv: 32, head_dim: 16}\n"
        "variants: {backend: [math, eager, flash], mod: [none, causal]}\n"
        "measure: {warmup: 1, repeats: 3}\nconstraints: {max_error: 1.0e-3}\n"
    )
    out = tmp_path / "run"
    code, text, err = run_cli(
        monkeypatch,
        capsys,
        "search",
        config,
        "--out",
        out,
        "--trials",
        4,
        "--max-memory",
        "1GiB",
        "--seed",
        2,
    )
    assert code == 0, err
    assert "4 measured" in text and "sl.Variant(backend=" in text and "optuna.log" in text
    assert "error <= 0.001, memory <= 1 GiB" in text  # config limit and flag together
    code, text, err = run_cli(
        monkeypatch, capsys, "pareto", out, "--priority", "memory", "--report"
    )
    assert code == 0, err
    assert "recommended (memory)" in text and "variants:" in text
    assert (out / "report.html").exists()
    assert "Pareto front and recommendation" in (out / "report.html").read_text()
    code, text, err = run_cli(
        monkeypatch, capsys, "sensitivity", out, "--method", "optuna", "--objective", "latency_ms"
    )
    assert code == 0, err
    assert "sensitivity · latency_ms" in text and "backend" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("search", "CONFIG", "--trials", 0), "--trials 0"),
        (("search", "CONFIG", "--trials", 2, "--sampler", "random"), "--sampler 'random'"),
        (("search", "CONFIG", "--trials", 2, "--max-memory", "lots"), "size such as"),
        (("search", "missing.yaml", "--trials", 2), "no such file or preset"),
        (("search", "CONFIG"), "--trials"),
        (("pareto", "nowhere"), "does not exist"),
        (("pareto", "RUN", "--priority", "speed"), "priority='speed'"),
        (("sensitivity", "RUN", "--method", "magic"), "method='magic'"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, message, tmp_path, monkeypatch, capsys):
    spec = replay_spec()
    run = tmp_path / "run"
    search(spec, run, trials=2, runner=replayer(spec))
    config = tmp_path / "c.yaml"
    config.write_text("name: c\ndevice: cpu\nvariants: {backend: [math, eager]}\n")
    args = [{"CONFIG": config, "RUN": run}.get(a, a) for a in args]
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
