"""Sensitivity analysis on real CPU measurements and on a model with known answers.

The two real grids in tests/data were measured by ``benchmarks/notes/sensitivity_data.py`` (the
engine, ``sweep``, on a 16-core x86 CPU; provenance is in each file's first row) and are stored
so the checks here are fast and the same on every machine:

* decode against a static KV cache: the memory that holds the context is the cache, and
  ``kv_cache_bytes`` = seq_kv x batch x bytes per element (kv_quant); the kernel does not
  change it. On the *total* peak the kernel does matter on the CPU (math and eager materialize
  the scores; quantized caches are dequantized per step), which the table shows too.
* prefill with masks: FlexAttention skips the blocks its mask leaves out, so its latency
  follows the mask's sparsity; the math kernel computes every score, so the mask barely moves
  it.
"""

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

import sdpalab as sl
from sdpalab.explore.sensitivity import COLUMNS, axes_of, sensitivity
from sdpalab.measure.result import Result

pytest.importorskip("optuna")
pytest.importorskip("SALib")
try:  # fANOVA's random forest; without it the table says so and the other methods stand
    import sklearn  # noqa: F401

    HAS_SKLEARN = True
except ImportError:
    HAS_SKLEARN = False

DATA = Path(__file__).parent / "data"
METHODS = ("fanova", "ped_anova", "sobol") if HAS_SKLEARN else ("ped_anova", "sobol")
FANOVA = ("fanova",) if HAS_SKLEARN else ()


def load(name):
    with gzip.open(DATA / f"{name}.jsonl.gz", "rt") as f:
        return [Result.from_dict(json.loads(line)) for line in f]


def importance(table, objective, method):
    rows = table[(table["objective"] == objective) & (table["method"] == method)]
    return {r.axis: r for r in rows.itertuples()}


def test_decode_kv_quant_and_seq_kv_drive_cache_memory_not_the_kernel():
    results = load("sensitivity-decode-cpu")
    assert len(results) == 54 and all(r.ok for r in results)
    table = sensitivity(results, objectives=("kv_cache_bytes", "peak_mem_total_bytes"), n_boot=6)
    assert list(table.columns) == COLUMNS
    for method in METHODS:
        imp = importance(table, "kv_cache_bytes", method)
        assert set(imp) == {"backend", "kv_quant", "seq_kv", "batch"}
        for axis in ("kv_quant", "seq_kv"):
            assert imp[axis].importance > imp["backend"].importance + 0.1, (method, axis)
    for method in (*FANOVA, "sobol"):  # and the intervals separate them
        imp = importance(table, "kv_cache_bytes", method)
        assert min(imp["kv_quant"].ci_low, imp["seq_kv"].ci_low) > imp["backend"].ci_high
    # the total peak grows with the context above all
    for method in METHODS:
        imp = importance(table, "peak_mem_total_bytes", method)
        assert max(imp, key=lambda a: imp[a].importance) == "seq_kv"


def test_prefill_mask_sparsity_drives_flex_latency_not_math():
    results = load("sensitivity-prefill-masks-cpu")
    assert len(results) == 32 and all(r.ok for r in results)
    flex = [r for r in results if r.variant["backend"] == "flex"]
    math_kernel = [r for r in results if r.variant["backend"] == "math"]
    flex_table = sensitivity(flex, objectives=("latency_ms",), n_boot=6)
    math_table = sensitivity(math_kernel, objectives=("latency_ms",), n_boot=6)
    for method in METHODS:
        on_flex = importance(flex_table, "latency_ms", method)
        on_math = importance(math_table, "latency_ms", method)
        assert set(on_flex) == {"mod", "seq_kv", "batch"}  # seq_q moves with seq_kv
        assert max(on_flex, key=lambda a: on_flex[a].importance) == "mod", method
        assert min(on_math, key=lambda a: on_math[a].importance) == "mod", method
    note = importance(flex_table, "latency_ms", "sobol")["mod"].note
    assert "sliding_window(window=64) 94%-97%" in note and "causal 50%" in note
    assert "seq_q moves with it" in importance(flex_table, "latency_ms", "sobol")["seq_kv"].note


def make(backend, seq, batch, value, *, mod="none", mod_args=None):
    var = sl.Variant(backend=backend, mod=mod, mod_args=mod_args or {})
    workload = {
        "phase": "prefill",
        "batch": batch,
        "heads_q": 4,
        "heads_kv": 4,
        "seq_q": seq,
        "seq_kv": seq,
        "head_dim": 64,
        "dtype": "float32",
        "device": "cpu",
    }
    return Result(
        variant=var.to_dict(),
        workload=workload,
        label=var.label(),
        trial_id=f"{var.label()}-{seq}-{batch}",
        latency_ms=value,
        peak_mem_total_bytes=1000,
        rel_fro_err=1e-7,
        allowed_fraction=1.0,
    )


def test_known_model_is_ranked_right_with_both_salib_methods():
    # log10 latency = 2*log10(seq) + 0.3*[backend == math] + 0 * batch effect
    results = [
        make(backend, seq, batch, seq**2 * (2.0 if backend == "math" else 1.0))
        for backend in ("math", "flash", "eager")
        for seq in (256, 512, 1024, 2048)
        for batch in (1, 2)
    ]
    for salib_method in ("sobol", "morris"):
        table = sensitivity(
            results, objectives=("latency_ms",), method="salib", salib_method=salib_method
        )
        imp = importance(table, "latency_ms", salib_method)
        assert imp["seq_kv"].importance > imp["backend"].importance > imp["batch"].importance
        assert imp["batch"].importance == pytest.approx(0.0, abs=0.02)
    table = sensitivity(results, objectives=("latency_ms",), method="optuna", n_boot=4)
    assert set(table["method"]) == {"fanova", "ped_anova"}
    if HAS_SKLEARN:
        assert importance(table, "latency_ms", "fanova")["seq_kv"].importance > 0.8
    else:
        assert "scikit-learn" in importance(table, "latency_ms", "fanova")[""].note
    assert all(r.ci_low <= r.ci_high for r in table.dropna().itertuples())


def test_missing_cells_are_filled_and_said():
    results = [
        make(b, s, 1, float(s) * (2 if b == "math" else 1))
        for b in ("math", "flash")
        for s in (256, 512, 1024)
    ]
    results[-1].status = "oom"  # flash at 1024 did not run
    table = sensitivity(results, objectives=("latency_ms",), method="salib")
    assert table["note"].str.contains("1 of 6 cells filled from the nearest").all()


def test_axes_fold_mod_args_and_merge_lockstep_fields():
    results = [
        make("flex", 512, 1, 1.0, mod="sliding_window", mod_args={"window": w}) for w in (64, 128)
    ] + [make("flex", 1024, 1, 2.0, mod="causal")]
    axes, points = axes_of(results)
    names = {a.name: a for a in axes}
    assert set(names) == {"mod", "seq_kv"} and names["seq_kv"].moves_with == ("seq_q",)
    assert points[0]["mod"] == "sliding_window(window=64)" and not names["mod"].ordinal
    crossed = [
        make("flex", 512, 1, 1.0, mod="sliding_window", mod_args={"window": w})
        for w in (64, 128, 256)
    ]
    axes, _ = axes_of(crossed)  # one mod: its argument is an ordinal axis of its own
    assert [(a.name, a.levels, a.ordinal) for a in axes] == [
        ("mod_args.window", (64, 128, 256), True)
    ]


def test_bad_input_and_too_few_results():
    with pytest.raises(ValueError, match="method"):
        sensitivity([], method="sobol")
    table = sensitivity([make("math", 256, 1, 1.0)], objectives=("latency_ms",))
    assert len(table) == 1 and math.isnan(table["importance"][0])
    assert "need 4" in table["note"][0]
    assert np.isnan(table["ci_low"][0])


@pytest.mark.slow  # bootstraps every estimator
def test_every_interval_holds_its_estimate():
    # `sensitivity` printed `mod │ ped_anova │ 0.011 │ 0.020 - 0.342`: bootstrap resamples
    # repeat trials, which reads as structure, so their importances sit above an estimate of 0
    for name in ("sensitivity-decode-cpu", "sensitivity-prefill-masks-cpu"):
        table = sensitivity(load(name), n_boot=10).dropna(subset=["importance"])
        assert len(table) > 10
        for row in table.itertuples():
            assert row.ci_low <= row.importance <= row.ci_high, (name, row)


def test_an_unknown_objective_is_refused_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"objective 'speed' is not valid; choose from: memory, "):
        sensitivity([make("math", 256, 1, 1.0)], objectives=("speed",))
    # memory is the measure the user picks, named for its field
    results = [make(b, s, 1, float(s)) for b in ("math", "flash") for s in (256, 512, 1024)]
    table = sensitivity(results, objectives=("memory",), method="salib")
    assert set(table["objective"]) == {"peak_mem_total_bytes"}
