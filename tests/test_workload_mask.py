"""The workload says which attention it means (issue 19, item 1).

A workload that names a mask is measured against that mask's oracle, so a variant computing
another one is an approximation whose error shows, and the analyses consider it only where the
user allows it. A workload that names none means each variant's own mask: masks then never
compete, each gets its own front.
"""

import json
import sys

import pytest

import sdpalab as sl
from cli_runner import run_cli
from sdpalab.explore.pareto import pareto
from sdpalab.explore.recommend import recommend, summarize_front
from sdpalab.measure.result import Result
from sdpalab.spec import Constraints, trial_id
from sdpalab.spec.config import spec_from_dict
from sdpalab.spec.variant import computed_mod, mod_text

SMALL = dict(seq_kv=64, head_dim=16, heads_q=2)
QUICK = sl.MeasureSettings(warmup=0, repeats=1, memory=False)
WINDOW = {"mod": "sliding_window", "mod_args": {"window": 8}}


# --------------------------------------------------------------------------- the spec


def test_a_workload_names_its_mask_and_it_is_checked():
    wl = sl.Workload(**SMALL, mod="sliding_window", mod_args={"window": 16})
    assert (wl.to_dict()["mod"], wl.to_dict()["mod_args"]) == ("sliding_window", {"window": 16})
    with pytest.raises(ValueError, match=r"needs mod_args\.window"):
        sl.Workload(mod="sliding_window")
    with pytest.raises(ValueError, match="mod='nope' is not valid"):
        sl.Workload(mod="nope")
    with pytest.raises(ValueError, match="mod_args"):
        sl.Workload(mod_args={"window": 4})  # arguments of no mask


def test_a_workload_that_names_no_mask_keeps_the_trial_ids_it_had():
    # computed before the workload had a mask: stored runs still resume
    wl = sl.Workload(**SMALL)
    assert "mod" not in wl.to_dict()
    assert trial_id(sl.Variant(backend="math", mod="causal"), wl, {}) == "c7c7ef0f9c70980a"


def test_a_config_names_the_workloads_mask():
    spec = spec_from_dict(
        {
            "name": "meant",
            "device": "cpu",
            "workload": {**SMALL, "mod": [{"sliding_window": {"window": 16}}, "causal"]},
            "variants": {"backend": "math", "mod": ["none", "causal"]},
            "constraints": {"allow_approximate": True},
        }
    )
    meant = {(t.workload.mod, json.dumps(t.workload.mod_args)) for t in spec.trials()}
    assert meant == {("sliding_window", '{"window": 16}'), ("causal", "{}")}
    assert len(spec.trials()) == 4 and spec.constraints.allow_approximate is True
    again = spec_from_dict(spec.to_dict())  # run.json's config reads back as the same trials
    assert [t.trial_id for t in again.trials()] == [t.trial_id for t in spec.trials()]


@pytest.mark.parametrize(
    ("workload", "constraints", "fragment"),
    [
        ({"mod": "sliding_window"}, None, "workload.mod: 'sliding_window' makes no valid trial"),
        ({"mod": "nope"}, None, "workload.mod: 'nope' is not valid; valid: none, causal"),
        ({"model": "tiny-llama", "mod": "causal"}, None, "workload.mod: not a key of a model"),
        ({}, {"allow_approximate": "yes"}, "constraints.allow_approximate"),
    ],
)
def test_bad_workload_masks_are_config_errors(workload, constraints, fragment):
    data = {"name": "bad", "device": "cpu", "workload": workload, "variants": {"backend": "math"}}
    if constraints:
        data["constraints"] = constraints
    with pytest.raises(ValueError) as info:
        spec_from_dict(data, source="c.yaml")
    assert fragment in str(info.value)


def test_allow_approximate_is_no_limit():
    allowed = Constraints(max_error=1e-2, allow_approximate=True)
    assert allowed.limits() == {"max_error": 1e-2}
    assert Constraints().limits() == {}


# --------------------------------------------------------------------------- the measurement


def test_error_is_measured_against_the_workloads_mask():
    window = sl.Variant(backend="math", **WINDOW)
    own = sl.measure(window, sl.Workload(**SMALL), QUICK)
    meant = sl.measure(window, sl.Workload(**SMALL, mod="causal"), QUICK)
    assert own.ok and meant.ok
    assert own.rel_fro_err < 1e-6  # against its own mask, as before
    assert meant.rel_fro_err > 1e-2  # an approximation of causal attention: the error shows
    exact = sl.measure(sl.Variant(backend="math", mod="causal"), sl.Workload(**SMALL, mod="causal"))
    assert exact.ok and exact.rel_fro_err < 1e-6


def test_a_cache_is_measured_against_the_workloads_mask():
    decode = dict(phase="decode", seq_kv=64, seq_q=4, head_dim=16, heads_q=2)
    static = sl.Variant(backend="math", kv_cache="static")
    ring = sl.Variant(backend="math", kv_cache="sliding", kv_args={"window": 8})
    assert sl.measure(static, sl.Workload(**decode, mod="causal"), QUICK).rel_fro_err < 1e-6
    assert sl.measure(ring, sl.Workload(**decode), QUICK).rel_fro_err < 1e-6  # its own window
    assert sl.measure(ring, sl.Workload(**decode, mod="causal"), QUICK).rel_fro_err > 1e-2


# --------------------------------------------------------------------------- the analyses


def result(backend, latency_ms, err, mod="none", mod_args=None, meant=None):
    """A Result of one prefill at S=64; ``meant``: the workload's mask, ``(name, args)``."""
    var = sl.Variant(backend=backend, mod=mod, mod_args=mod_args or {})
    named = {"mod": meant[0], "mod_args": meant[1]} if meant else {}
    wl = sl.Workload(**SMALL, **named)
    return Result(
        variant=var.to_dict(),
        workload=wl.to_dict(),
        status="ok",
        trial_id=trial_id(var, wl, {}),
        label=var.label(),
        latency_ms=latency_ms,
        latency_iqr_ms=0.001,
        peak_mem_bytes=1 << 20,
        peak_mem_total_bytes=2 << 20,
        rel_fro_err=err,
        tolerance=1.1e-5,
    )


def test_masks_never_compete_when_the_workload_names_none():
    results = [
        result("math", 2.0, 1e-7),
        result("math", 1.5, 1e-7, mod="causal"),
        result("eager", 0.3, 1e-7, **WINDOW),  # fastest, and exact against its own mask
    ]
    summary = summarize_front(results)
    assert len(summary.shapes) == 3  # one front per mask
    for shape, ctx in summary.shapes.items():
        best = summary.recommendations[shape].best
        assert mod_text(*computed_mod(best.variant)) == ctx["mod"]
    assert [r.label for r in pareto(results)] == [r.label for r in results]  # each its own front
    with pytest.raises(ValueError, match="'mod'"):
        recommend(results)  # three masks: the user says which one
    assert recommend(results, context={"mod": "none"}).best.label == "math"


def test_an_approximation_is_considered_only_where_the_user_allows():
    full = ("none", {})
    exact = result("math", 2.0, 1e-7, meant=full)
    window = result("eager", 0.3, 3e-2, meant=full, **WINDOW)  # its error against full attention
    results, budget = [exact, window], Constraints(max_error=5e-2)
    assert recommend(results, constraints=budget).best is exact
    assert pareto(results, constraints=budget) == [exact]
    summary = summarize_front(results, constraints=budget)
    ((_, off),) = summary.excluded.items()
    assert [(r.label, why) for r, why in off] == [
        ("eager/sliding_window(window=8)",
         "approximation of none (computes sliding_window(window=8); allow_approximate admits it)"),
    ]  # fmt: skip
    allowed = Constraints(max_error=5e-2, allow_approximate=True)
    assert recommend(results, constraints=allowed).best is window
    assert pareto(results, constraints=allowed) == [exact, window]  # faster, or exact
    # allowed, an approximation still answers to the error gate: without a budget, its dtype's
    assert recommend(results, constraints=Constraints(allow_approximate=True)).best is exact


def test_summary_tables_keep_the_workloads_masks_apart():
    from sdpalab.report.tables import group_tables

    results = [
        result("math", 1.0, 1e-7, meant=("causal", {})),
        result("math", 2.0, 1e-7, meant=("sliding_window", {"window": 8})),
        result("math", 3.0, 1e-7),
    ]
    tables = group_tables(results)
    assert [t.title.split(" · ")[3:4] for t in tables] == [
        ["means causal"],
        ["means sliding_window(window=8)"],
        [],
    ]
    assert [c.latency_ms for t in tables for c in t.cells.values()] == [1.0, 2.0, 3.0]


def test_each_masks_front_gets_its_own_plot(tmp_path):
    from sdpalab.report.plots import render_plots

    results = [
        result(backend, lat * scale, 1e-7, **mask)
        for backend, lat in (("math", 2.0), ("eager", 3.0), ("flash", 1.0))
        for scale, mask in ((1.0, {}), (0.6, {"mod": "causal"}))
    ]
    names = sorted(p.name for p in render_plots(results, tmp_path) if "pareto" in p.name)
    assert len(names) == 2 and any("causal" in name for name in names)


# --------------------------------------------------------------------------- the search


def made_up(trial):
    """A measurement shaped like the quick preset's on a CPU: the sliding window is fastest, and
    each variant is exact against the mask its workload means (its own, when none is named)."""
    var, wl = trial.variant_spec, trial.workload_spec
    lat = {"math": 2.0, "eager": 3.0, "flash": 1.0}[var["backend"]] * wl["seq_kv"] / 256
    lat *= {"none": 1.0, "causal": 0.6, "sliding_window": 0.2}[var["mod"]]
    err = 2e-7 if var.get("kv_quant", "none") == "none" else 1e-2
    mem = wl["seq_kv"] ** 2 * 4
    return trial.result(
        "ok",
        "",
        latency_ms=lat,
        latency_iqr_ms=0.01,
        rel_fro_err=err,
        tolerance=1.1e-5,
        peak_mem_bytes=mem,
        peak_mem_total_bytes=2 * mem,
        kv_cache_bytes=mem if var.get("kv_cache", "none") != "none" else None,
    )


@pytest.fixture
def replayed(monkeypatch):
    """``sdpalab search`` with made-up measurements instead of the engine."""
    pytest.importorskip("optuna")
    import sdpalab.explore.search as search_module

    real = search_module.search
    monkeypatch.setattr(
        search_module,
        "search",
        lambda *a, **kw: real(*a, runner=lambda trials: [made_up(t) for t in trials], **kw),
    )


def test_quick_search_never_recommends_another_mask(tmp_path, capsys, replayed):
    # the repro: `sdpalab search quick --trials 6` recommended
    # eager/sliding_window(window=128) for a full-attention prefill of 1024 tokens
    code, out, err = run_cli(
        capsys, "search", "quick", "--trials", 6, "--out", tmp_path / "run", "--json"
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["shapes"]
    for shape in doc["shapes"]:
        rec = shape["recommendation"]
        if rec is not None:
            meant = shape["context"]["mod"]
            assert mod_text(*computed_mod(rec["best"]["variant"])) == meant, shape["shape"]


def masks_spec(**constraints):
    return spec_from_dict(
        {
            "name": "meant",
            "device": "cpu",
            "workload": {**SMALL, "seq_kv": [64, 128], "mod": "none"},
            "variants": {
                "backend": ["math", "eager"],
                "mod": ["none", "causal", {"sliding_window": {"window": 8}}],
            },
            "constraints": {"max_error": 0.5, **constraints},
        }
    )


@pytest.mark.parametrize("allowed", [False, True])
def test_search_considers_approximations_only_where_allowed(tmp_path, allowed):
    pytest.importorskip("optuna")
    from sdpalab.explore.search import search

    spec = masks_spec(allow_approximate=allowed)
    found = search(spec, tmp_path, trials=12, runner=lambda ts: [made_up(t) for t in ts])
    mods = {r.variant["mod"] for r in found.results}
    assert mods == ({"none", "causal", "sliding_window"} if allowed else {"none"})
    best = found.recommend(context={"seq_kv": 128}).best
    assert best.variant["mod"] == ("sliding_window" if allowed else "none")


def test_the_cli_flag_allows_approximations(tmp_path, capsys, replayed):
    config = tmp_path / "meant.yaml"
    config.write_text(json.dumps(masks_spec().to_dict()))
    argv = ("search", config, "--trials", 12, "--json", "--out")
    code, out, err = run_cli(capsys, *argv, tmp_path / "strict")
    assert code == 0, err
    assert {s["context"]["mod"] for s in json.loads(out)["shapes"]} == {"none"}
    best = [s["recommendation"]["best"]["variant"]["mod"] for s in json.loads(out)["shapes"]]
    assert best == ["none", "none"]
    code, out, err = run_cli(capsys, *argv, tmp_path / "loose", "--allow-approximate")
    assert code == 0, err
    best = [s["recommendation"]["best"]["variant"]["mod"] for s in json.loads(out)["shapes"]]
    assert best == ["sliding_window", "sliding_window"]
    code, out, err = run_cli(capsys, "pareto", tmp_path / "loose", "--json")
    assert code == 0, err  # the run's config did not allow them: pareto follows the config
    best = [s["recommendation"]["best"]["variant"]["mod"] for s in json.loads(out)["shapes"]]
    assert best == ["none", "none"]
    code, out, err = run_cli(capsys, "pareto", tmp_path / "loose", "--json", "--allow-approximate")
    best = [s["recommendation"]["best"]["variant"]["mod"] for s in json.loads(out)["shapes"]]
    assert code == 0 and best == ["sliding_window", "sliding_window"]
    code, out, err = run_cli(capsys, "pareto", tmp_path / "loose", "--allow-approximate")
    assert code == 0 and "approximations allowed" in out
    code, out, err = run_cli(capsys, "pareto", tmp_path / "loose")
    text = " ".join(out.split())
    assert "approximation of none (computes sliding_window(window=8)" in text


def test_sensitivity_keeps_the_variants_mask_apart_from_the_workloads():
    from sdpalab.explore.factors import point_of

    point = point_of(result("eager", 0.3, 3e-2, meant=("causal", {}), **WINDOW))
    assert point["mod"] == "sliding_window" and point["mod_args.window"] == 8
    assert point["workload.mod"] == "causal"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
