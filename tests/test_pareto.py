"""Pareto front, recommendation, hypervolume and goldilocks-across-shapes on constructed Results.

The search-against-grid and fault-injection checks that run the engine are in test_search.py.
"""

import itertools

import numpy as np
import pytest
import yaml

import sdpalab as sl
from sdpalab.explore.objectives import check_constraints
from sdpalab.explore.pareto import hypervolume, pareto
from sdpalab.explore.recommend import recommend, summarize_front
from sdpalab.explore.shapes import goldilocks_across_shapes
from sdpalab.measure.result import Result
from sdpalab.spec import Constraints

MiB = 2**20


def make(
    backend="math",
    *,
    lat=1.0,
    iqr=0.01,
    mem=10 * MiB,
    err=1e-7,
    seq=1024,
    mod="none",
    mod_args=None,
    kv_quant="none",
    dtype="float32",
    status="ok",
    tol=1.1e-5,
    tid=None,
):
    variant = sl.Variant(
        backend=backend,
        mod=mod,
        mod_args=mod_args or {},
        kv_cache="static" if kv_quant != "none" else "none",
        kv_quant=kv_quant,
    )
    workload = {
        "phase": "prefill",
        "batch": 1,
        "heads_q": 4,
        "heads_kv": 4,
        "seq_q": seq,
        "seq_kv": seq,
        "head_dim": 64,
        "dtype": dtype,
        "device": "cpu",
    }
    ok = status == "ok"
    return Result(
        variant=variant.to_dict(),
        workload=workload,
        status=status,
        label=variant.label(),
        trial_id=tid or f"{variant.label()}-{dtype}-{seq}",
        latency_ms=lat if ok else None,
        latency_iqr_ms=iqr if ok else None,
        peak_mem_bytes=mem if ok else None,
        peak_mem_total_bytes=mem if ok else None,
        rel_fro_err=err if ok else None,
        tolerance=tol,
    )


def labels(results):
    return sorted(r.label for r in results)


def test_front_is_the_non_dominated_feasible_set():
    a = make("math", lat=1.0, mem=30 * MiB, err=1e-7)
    b = make("flash", lat=0.5, mem=20 * MiB, err=2e-7)
    c = make("eager", lat=2.0, mem=5 * MiB, err=3e-7)  # slowest, least memory: on the front
    d = make("flex", lat=0.6, mem=25 * MiB, err=3e-7)  # dominated by b
    failed = make("efficient", status="oom")
    front = pareto([a, b, c, d, failed], noise_aware=False)
    assert labels(front) == ["eager", "flash", "math"]  # math has the lowest error
    assert labels(pareto([a, b, c, d], objectives=("latency_ms", "memory"))) == ["eager", "flash"]


def test_noise_aware_latency_ties():
    fast = make("flash", lat=1.00, iqr=0.10, mem=10 * MiB)
    close = make("math", lat=1.05, iqr=0.10, mem=10 * MiB)  # within noise: a tie
    worse = make("eager", lat=1.02, iqr=0.10, mem=20 * MiB)  # tie on latency, more memory
    assert labels(pareto([fast, close, worse], noise_aware=False)) == ["flash"]
    assert labels(pareto([fast, close, worse])) == ["flash", "math"]
    far = make("math", lat=1.5, iqr=0.10, mem=10 * MiB)  # beyond the combined IQR
    assert labels(pareto([fast, far])) == ["flash"]


def test_constraints_and_contexts():
    small = make("math", lat=1.0, mem=100 * MiB, seq=512)
    big = make("math", lat=4.0, mem=400 * MiB, seq=2048)
    lean = make("eager", lat=6.0, mem=50 * MiB, seq=2048)
    # each shape has its own front: the 512 point does not dominate the 2048 ones
    assert len(pareto([small, big, lean])) == 3
    capped = pareto([small, big, lean], constraints=Constraints(max_memory=200 * MiB))
    assert labels(capped) == ["eager", "math"] and big not in capped
    assert pareto([small], constraints=Constraints(max_latency_ms=0.5)) == []
    assert pareto([small], constraints=Constraints(max_error=1e-9)) == []


def test_constraints_are_checked():
    assert check_constraints(None) == Constraints()
    for bad in (Constraints(max_error=-1), Constraints(max_memory="2GiB")):
        with pytest.raises(ValueError, match="must be a positive number"):
            pareto([make()], constraints=bad)
    with pytest.raises(ValueError, match="priority"):
        recommend([make()], priority="speed")


def fast_but_wrong():
    # faster and leaner than everything, error 100x the float32 tolerance
    return make("eager", lat=0.01, mem=1 * MiB, err=1e-3, tid="wrong")


@pytest.mark.parametrize("priority", ["latency", "memory", "error", "balanced"])
def test_fast_but_wrong_is_never_recommended(priority):
    good = [
        make("math", lat=1.0, mem=30 * MiB, err=1e-7),
        make("flash", lat=0.5, mem=20 * MiB, err=2e-6),
    ]
    rec = recommend([*good, fast_but_wrong()], priority=priority)
    assert rec.best.trial_id != "wrong" and rec.runner_up.trial_id != "wrong"
    assert rec.excluded == {"over the error tolerance": 1}
    # an explicit error budget that admits it makes it a candidate again
    loose = recommend(
        [*good, fast_but_wrong()], priority="latency", constraints=Constraints(max_error=1e-2)
    )
    assert loose.best.trial_id == "wrong"


def test_recommendation_by_priority_with_trade():
    # errors apart by more than the float32 tolerance (approximations an error budget admits)
    fast = make("flash", lat=0.5, mem=40 * MiB, err=4e-3)
    lean = make("eager", lat=2.0, mem=5 * MiB, err=6e-3)
    exact = make("math", lat=1.0, mem=30 * MiB, err=1e-8)
    results = [fast, lean, exact]
    budget = Constraints(max_error=1e-2)
    assert recommend(results, priority="latency", constraints=budget).best is fast
    assert recommend(results, priority="memory", constraints=budget).best is lean
    assert recommend(results, priority="error", constraints=budget).best is exact
    rec = recommend(results, priority="latency", constraints=budget)
    assert rec.runner_up is exact
    assert "100% slower (1 ms vs 0.5 ms)" in rec.trade and "25% less memory" in rec.trade
    # the variant pastes back into Python and YAML
    variant = eval(rec.variant_python().split("#")[0], {"sl": sl})
    assert variant == sl.Variant(**fast.variant)
    doc = yaml.safe_load(rec.variant_yaml())
    assert doc["variants"] == {"backend": "flash"} and doc["workload"] == {"dtype": "float32"}
    assert "flash" in rec.summary() and "runner-up" in rec.summary()


def test_latency_ties_go_to_less_memory():
    a = make("flash", lat=1.00, iqr=0.1, mem=40 * MiB)
    b = make("math", lat=1.04, iqr=0.1, mem=10 * MiB)
    assert recommend([a, b], priority="latency").best is b


def test_recommendation_meets_every_constraint():
    rng = np.random.default_rng(0)
    backends = ["math", "flash", "eager", "flex", "efficient", "cudnn"]
    for trial in range(40):
        results = [
            make(
                backends[i % 6],
                lat=float(rng.lognormal(0, 1)),
                iqr=float(rng.uniform(0, 0.2)),
                mem=int(rng.lognormal(17, 1)),
                err=float(10 ** rng.uniform(-8, -2)),
                tid=f"{trial}-{i}",
                status="ok" if rng.random() > 0.2 else rng.choice(["oom", "error"]),
            )
            for i in range(30)
        ]
        lim = Constraints(
            max_error=float(10 ** rng.uniform(-7, -3)),
            max_memory=int(rng.lognormal(17.5, 1)),
            max_latency_ms=float(rng.lognormal(0.5, 1)),
        )
        for priority in ("latency", "memory", "error", "balanced"):
            try:
                rec = recommend(results, priority=priority, constraints=lim)
            except ValueError as err:
                assert "no configuration qualifies" in str(err)
                continue
            for pick in filter(None, [rec.best, rec.runner_up]):
                assert pick.ok and pick.rel_fro_err <= lim.max_error
                assert pick.peak_mem_total_bytes <= lim.max_memory
                assert pick.latency_ms <= lim.max_latency_ms
            assert rec.best in pareto(results, constraints=lim)


def test_several_shapes_need_a_context():
    results = [
        make("math", seq=512),
        make("flash", seq=512, lat=0.5),
        make("math", seq=2048, lat=8),
        make("flash", seq=2048, lat=3),
    ]
    with pytest.raises(ValueError, match=r"2 shapes .*seq_kv=512"):
        recommend(results)
    rec = recommend(results, context={"seq_kv": 2048})
    assert rec.best.workload["seq_kv"] == 2048 and rec.best.label == "flash"


def test_nothing_qualifies_says_why():
    with pytest.raises(ValueError, match="2 status oom"):
        recommend([make("math", status="oom"), make("flash", status="oom")])


def test_hypervolume():
    assert hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), [3, 3]) == pytest.approx(3.0)
    assert hypervolume(np.array([[0.0, 0.0, 0.0]]), [1, 2, 3]) == pytest.approx(6.0)
    assert hypervolume(np.array([[5.0, 0.0]]), [3, 3]) == 0.0  # beyond the reference
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 1, size=(12, 3))
    samples = rng.uniform(0, 1, size=(200_000, 3))
    covered = (pts[None, :, :] <= samples[:, None, :]).all(-1).any(-1).mean()
    assert hypervolume(pts, [1, 1, 1]) == pytest.approx(covered, abs=0.01)


def test_goldilocks_across_shapes():
    # flash and eager stay within 10 % of every shape's front; math wins at 1k, is 3x off after
    results = []
    for seq, scale in ((1024, 1.0), (8192, 30.0), (32768, 400.0)):
        results.append(make("flash", lat=scale * 1.00, mem=int(scale * 10 * MiB), seq=seq))
        results.append(
            make(
                "math",
                lat=scale * (0.95 if seq == 1024 else 3.0),
                mem=int(scale * 10 * MiB),
                seq=seq,
            )
        )
        results.append(make("eager", lat=scale * 1.04, mem=int(scale * 10.2 * MiB), seq=seq))
    table = goldilocks_across_shapes(results, within=0.10)
    assert list(table["label"]) == ["flash [float32]", "eager [float32]"]
    assert {"gap[seq_q=1024, seq_kv=1024]", "worst_gap", "variant"} <= set(table.columns)
    assert table.loc[0, "worst_gap"] <= 0.12
    everything = goldilocks_across_shapes(results, within=0.10, include_all=True)
    spiky = everything[everything["label"] == "math [float32]"].iloc[0]
    assert spiky["worst_gap"] == pytest.approx(2.0, rel=0.05) and not spiky["goldilocks"]
    # a configuration missing on one shape (failed there) is not a candidate
    results[-3] = make("flash", status="oom", seq=32768)
    table = goldilocks_across_shapes(results, within=0.10)
    assert list(table["label"]) == ["eager [float32]"]


def test_front_matches_brute_force_on_random_points():
    rng = np.random.default_rng(2)
    backends = list(itertools.product(["math", "flash", "eager"], ["none", "causal"]))
    results = []
    for i in range(60):
        be, mod = backends[i % len(backends)]
        results.append(
            make(
                be,
                mod=mod,
                lat=float(rng.uniform(1, 10)),
                iqr=0.0,
                mem=int(rng.uniform(1, 10) * MiB),
                err=float(rng.uniform(1e-8, 1e-6)),
                tid=str(i),
                tol=None,  # no tolerance: errors compare exactly, as in the brute force
            )
        )
    front = {r.trial_id for r in pareto(results)}
    for r in results:
        rivals = [o for o in results if o.variant["mod"] == r.variant["mod"]]  # masks never compete
        dominated = any(
            all(
                getattr(o, f) <= getattr(r, f)
                for f in ("latency_ms", "peak_mem_total_bytes", "rel_fro_err")
            )
            and any(
                getattr(o, f) < getattr(r, f)
                for f in ("latency_ms", "peak_mem_total_bytes", "rel_fro_err")
            )
            for o in rivals
        )
        assert (r.trial_id in front) == (not dominated)


# --------------------------------------------------------------------------- ties (issue 19)


def test_errors_within_tolerance_tie_and_the_slower_fatter_point_leaves_the_front():
    # `sdpalab pareto` on the quick preset: 2.36e-7 vs 2.40e-7 is rounding, 50x under tolerance
    flash = make("flash", mod="causal", lat=0.683, iqr=0.01, mem=int(1.42 * MiB), err=2.40e-7)
    eager = make("eager", mod="causal", lat=1.48, iqr=0.02, mem=int(5.75 * MiB), err=2.36e-7)
    assert pareto([flash, eager]) == [flash]
    summary = summarize_front([flash, eager])
    assert summary.front == [flash]
    assert summary.excluded_rows()[0]["reason"] == "dominated by flash/causal [float32]"
    rec = recommend([flash, eager])
    assert "same error within tolerance" in rec.trade and "1x lower" not in rec.trade
    # exact comparisons (noise_aware=False) keep the 1.7 % smaller error as a trade-off
    assert labels(pareto([flash, eager], noise_aware=False)) == ["eager/causal", "flash/causal"]
    # beyond the tolerance the error is a trade-off again
    approx = make("eager", mod="causal", lat=1.48, mem=int(5.75 * MiB), err=2.36e-7, tol=1e-9)
    assert len(pareto([flash, approx])) == 2


def test_a_tie_passes_the_ranking_to_the_next_objective():
    # both errors far under the float32 tolerance: "error" priority falls to latency, then memory
    exact = make("math", lat=2.0, iqr=0.01, mem=30 * MiB, err=1e-8)
    fast = make("flash", lat=0.5, iqr=0.01, mem=30 * MiB, err=3e-7)
    assert recommend([exact, fast], priority="error").best is fast
    lean = make("eager", lat=0.51, iqr=0.02, mem=10 * MiB, err=2e-7)  # same latency within noise
    assert recommend([exact, fast, lean], priority="error").best is lean


def test_ties_do_not_drop_a_point_that_only_a_dominated_point_beats():
    # latencies 1.0 ~ 1.5 ~ 2.0 ms within noise, yet 1.0 beats 2.0: b beats a (same latency,
    # less memory) and c beats b, but nothing on the front beats a, the fastest
    a = make("math", lat=1.0, iqr=0.6, mem=30 * MiB, tid="a")
    b = make("flash", lat=1.5, iqr=0.6, mem=20 * MiB, tid="b")
    c = make("eager", lat=2.0, iqr=0.6, mem=10 * MiB, tid="c")
    assert [r.trial_id for r in pareto([a, b, c])] == ["a", "c"]
    by = {row["trial_id"]: row["reason"] for row in summarize_front([a, b, c]).excluded_rows()}
    assert by == {"b": "dominated by eager [float32]"}


def test_front_with_ties_is_stable_and_complete_on_random_points():
    from sdpalab.explore.objectives import (
        OBJECTIVES,
        error_tolerances,
        objective_matrix,
        tie_matrix,
    )
    from sdpalab.explore.pareto import dominance, front_of

    rng = np.random.default_rng(3)
    for trial in range(30):
        results = [
            make(
                ["math", "flash", "eager"][i % 3],
                lat=float(rng.uniform(1, 3)),
                iqr=float(rng.uniform(0, 0.3)),
                mem=int(rng.integers(1, 6)) * MiB,
                err=float(10 ** rng.uniform(-8, -4)),
                tid=f"{trial}-{i}",
            )
            for i in range(25)
        ]
        found = front_of(results)
        on = {id(r) for r in found.members}
        tols = error_tolerances(results)
        values = objective_matrix(results, OBJECTIVES)
        dom = dominance(values, tie_matrix(results, values, OBJECTIVES, tols))
        index = {id(r): i for i, r in enumerate(results)}
        for r in found.members:  # no front point beats another
            assert not any(dom[index[id(o)], index[id(r)]] for o in found.members)
        assert len(found.members) + len(found.dominated) == len(results)
        for r, by in found.dominated:  # every other point is beaten by a front point
            assert id(by) in on and dom[index[id(by)], index[id(r)]]


def model_result(kv_quant, *, lat, iqr, err, kv, tid):
    """A tiny-llama trial as ``model_trial`` stores it: no float64 oracle, tolerance NaN."""
    variant = sl.Variant(backend="math", kv_cache="static", kv_quant=kv_quant)
    workload = sl.ModelWorkload(model="tiny-llama", prompt_len=64, new_tokens=16).to_dict()
    return Result(
        variant=variant.to_dict(),
        workload=workload,
        label=variant.label(),
        trial_id=tid,
        latency_ms=lat,
        latency_iqr_ms=iqr,
        peak_mem_bytes=kv + MiB,
        peak_mem_total_bytes=kv + 20 * MiB,
        kv_cache_bytes=kv,
        rel_fro_err=err,
        tolerance=float("nan"),
    )


def test_model_workloads_are_gated_by_what_their_lossless_variants_show():
    # `search model-tiny --trials 3` recommended math/dynamic+int8 3.91 ms ± 1.6 over
    # math/static 2.86 ms ± 0.074: "same latency within noise", and no error gate at all
    static = model_result("none", lat=2.86, iqr=0.074, err=3e-6, kv=4 * MiB, tid="static")
    int8 = model_result("int8", lat=3.91, iqr=1.6, err=2e-3, kv=1 * MiB, tid="int8")
    rec = recommend([static, int8], priority="latency")
    assert rec.best is static and rec.excluded == {"over the error tolerance": 1}
    from sdpalab.explore.objectives import error_tolerances

    assert error_tolerances([static, int8]) == [3e-6, 3e-6]
    # the front shows the quantized cache (least memory) marked, with the gate that applied
    summary = summarize_front([static, int8])
    picks = {row["trial_id"]: (row["pick"], row["tolerance"]) for row in summary.rows()}
    assert picks == {"static": ("best", 3e-6), "int8": ("over tol.", 3e-6)}
    from rich.console import Console

    from sdpalab.report.search_report import render_front

    console = Console(record=True, width=100)
    render_front(console, summary)
    assert "over tol.: error above the tolerance (3e-06)" in console.export_text()
    # an explicit error budget admits the quantized cache again
    allowed = Constraints(max_error=1e-2)
    assert recommend([static, int8], priority="memory", constraints=allowed).best is int8
    # and with it, a wide interval does not tie with a tight one that lies clear of it: for
    # latency the lower, tighter 2.86 ms ± 0.074 wins (3.91 ± 1.6 reaches down to 3.11 only)
    assert recommend([static, int8], priority="latency", constraints=allowed).best is static
    # without a lossless variant to compare with, the dtype's attention tolerance applies
    assert error_tolerances([int8]) == [pytest.approx(1.1e-5, rel=0.05)]


# --------------------------------------------------------------------------- memory measures


def decode_8k(kv_quant, *, kv, peak, lat, err):
    """A decode step at an 8k context with 1 GiB of full-precision inputs held beside it."""
    variant = sl.Variant(backend="math", kv_cache="static", kv_quant=kv_quant)
    wl = sl.Workload(
        phase="decode", batch=4, heads_q=32, heads_kv=8, seq_kv=8192, head_dim=128
    ).to_dict()
    return Result(
        variant=variant.to_dict(),
        workload=wl,
        label=variant.label(),
        trial_id=variant.label(),
        latency_ms=lat,
        latency_iqr_ms=0.05,
        input_bytes=1024 * MiB,
        kv_cache_bytes=kv,
        peak_mem_bytes=peak,
        peak_mem_total_bytes=1024 * MiB + kv + peak,
        rel_fro_err=err,
        tolerance=1.1e-5,
    )


def test_memory_measures_and_the_limit_follow_the_users_choice():
    # `--priority memory --max-memory 600MiB` at 8k: the unquantized cache does not fit, int8's
    # does; the total peak (the only measure before) counts the inputs, so nothing fit
    full = decode_8k("none", kv=1024 * MiB, peak=8 * MiB, lat=3.0, err=1e-7)
    int8 = decode_8k("int8", kv=260 * MiB, peak=16 * MiB, lat=3.2, err=4e-3)
    int4 = decode_8k("int4", kv=140 * MiB, peak=2048 * MiB, lat=5.0, err=6e-3)  # dequantizes
    results = [full, int8, int4]
    limits = Constraints(max_memory=600 * MiB, max_error=1e-2)
    rec = recommend(results, priority="memory", constraints=limits)
    assert rec.best is int8 and rec.excluded == {"over max_memory": 2}
    from sdpalab.explore.objectives import memory_of

    assert memory_of(int8) == 276 * MiB  # decode: persistent = cache + the step's transient
    assert "276 MiB persistent" in rec.summary()
    # the cache alone: int4's transient copy does not count
    rec = recommend(results, priority="memory", constraints=limits, memory="cache")
    assert rec.best is int4 and memory_of(int4, "cache") == 140 * MiB
    assert pareto(results, memory="cache", constraints=limits) == [int8, int4]
    with pytest.raises(ValueError, match="3 over max_memory"):
        recommend(results, priority="memory", constraints=limits, memory="total")
    with pytest.raises(ValueError, match="memory='ram' is not valid; choose one of: auto"):
        pareto(results, memory="ram")
    # the table shows the measure and the cache bytes
    (row,) = [r for r in summarize_front(results, memory="peak").rows() if r["pick"] == "best"]
    assert row["memory_measure"] == "peak" and row["kv_cache_bytes"] is not None
    # prefill keeps the total peak
    assert memory_of(make("math", mem=10 * MiB)) == 10 * MiB
