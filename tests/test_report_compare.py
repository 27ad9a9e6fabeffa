"""Compare two runs: trials matched by configuration, verdicts against the combined IQRs."""

import dataclasses

import pytest

from report_fixtures import make_result, sweep_results, write_run
from sdpalab.cli import main
from sdpalab.report.compare import compare_runs, parse_threshold, slower_than


def _by_label(comparisons, label, shape_part=""):
    return next(c for c in comparisons if c.label == label and shape_part in c.shape)


def test_two_x_slowdown_is_slower_and_noise_is_same():
    base = [
        make_result(backend="math", latency_ms=1.0, iqr_ms=0.02),
        make_result(backend="efficient", latency_ms=1.0, iqr_ms=0.05),
        make_result(backend="eager", latency_ms=1.0, iqr_ms=0.02),
    ]
    new = [
        make_result(backend="math", latency_ms=2.0, iqr_ms=0.04),  # 2x: slower
        make_result(backend="efficient", latency_ms=1.08, iqr_ms=0.05),  # 8% < 0.10 IQRs
        make_result(backend="eager", latency_ms=0.5, iqr_ms=0.01),
    ]  # 2x faster
    got = {c.label: c for c in compare_runs(base, new)}
    assert got["math"].verdict == "slower"
    assert got["math"].latency_ratio == pytest.approx(2.0)
    assert got["math"].noise_ms == pytest.approx(0.06)
    assert got["efficient"].verdict == "same"
    assert got["eager"].verdict == "faster"
    assert [c.label for c in slower_than(list(got.values()), 0.10)] == ["math"]
    assert slower_than(list(got.values()), 1.5) == []  # 100 % slower is within a 150 % budget


def test_matches_by_config_not_trial_id():
    base = [make_result(backend="math", latency_ms=1.0, repeats=20)]
    new = [make_result(backend="math", latency_ms=1.0, repeats=50)]
    assert base[0].trial_id != new[0].trial_id
    (c,) = compare_runs(base, new)
    assert c.verdict == "same" and c.base_trial_id != c.new_trial_id


def test_ratios_failures_and_unmatched():
    base = [
        make_result(backend="math", peak_mem_bytes=100, rel_fro_err=1e-6),
        make_result(backend="efficient"),
        make_result(backend="eager", status="oom", reason="OutOfMemoryError"),
        make_result(backend="flex", status="error", reason="x"),
        make_result(backend="math", seq=2048),
    ]
    new = [
        make_result(backend="math", peak_mem_bytes=50, rel_fro_err=4e-6),
        make_result(backend="efficient", status="crash", reason="segfault"),
        make_result(backend="eager"),
        make_result(backend="flex", status="error", reason="x"),
        make_result(backend="math", seq=512),
    ]
    got = {(c.label, c.shape.split("S=")[1].split()[0]): c for c in compare_runs(base, new)}
    assert got[("math", "1024")].mem_ratio == pytest.approx(0.5)
    assert got[("math", "1024")].err_ratio == pytest.approx(4.0)
    assert got[("efficient", "1024")].verdict == "broken"
    assert got[("eager", "1024")].verdict == "fixed"
    assert got[("flex", "1024")].verdict == "failed"
    assert got[("math", "512")].verdict == "added"
    assert got[("math", "2048")].verdict == "removed"


def test_stored_runs_compare_like_in_memory(tmp_path):
    # Through the CSV (ints read back as floats, dicts as JSON text) the keys still match.
    results = sweep_results()
    write_run(tmp_path / "a", results)
    from sdpalab.run.rundir import load, load_results

    comparisons = compare_runs(load(tmp_path / "a"), results)
    assert {c.verdict for c in comparisons} == {"same", "failed"}
    assert len(comparisons) == len(results)
    assert len(compare_runs(load_results(tmp_path / "a"), results)) == len(results)


def test_parse_threshold():
    assert parse_threshold("10%") == pytest.approx(0.10)
    assert parse_threshold(" 2.5 % ") == pytest.approx(0.025)
    for bad in ("10", "abc", "-5%", "1.1x"):
        with pytest.raises(ValueError, match="give a percentage such as 10%"):
            parse_threshold(bad)


def _cli(monkeypatch, *args) -> int:
    monkeypatch.setattr("sys.argv", ["sdpalab", *map(str, args)])
    try:
        main()
    except SystemExit as done:
        return done.code or 0
    return 0


def test_cli_fail_if_slower(tmp_path, monkeypatch, capsys):
    base = [
        make_result(backend=b, seq=s, latency_ms=s / 512, iqr_ms=0.01)
        for b in ("math", "efficient")
        for s in (512, 1024)
    ]
    slow = [
        dataclasses.replace(r, latency_ms=2 * r.latency_ms) if r.variant["backend"] == "math" else r
        for r in base
    ]
    noise = [dataclasses.replace(r, latency_ms=r.latency_ms + 0.5 * r.latency_iqr_ms) for r in base]
    write_run(tmp_path / "base", base)
    write_run(tmp_path / "slow", slow)
    write_run(tmp_path / "noise", noise)
    assert (
        _cli(
            monkeypatch,
            "report",
            tmp_path / "slow",
            "--compare",
            tmp_path / "base",
            "--fail-if-slower",
            "10%",
        )
        == 1
    )
    assert "slower than 10% beyond noise" in capsys.readouterr().err
    assert (
        _cli(
            monkeypatch,
            "report",
            tmp_path / "noise",
            "--compare",
            tmp_path / "base",
            "--fail-if-slower",
            "10%",
        )
        == 0
    )
    assert (
        _cli(
            monkeypatch,
            "report",
            tmp_path / "slow",
            "--compare",
            tmp_path / "base",
            "--fail-if-slower",
            "150%",
        )
        == 0
    )
    assert (tmp_path / "slow" / "report.html").exists()
    assert _cli(monkeypatch, "report", tmp_path / "slow", "--fail-if-slower", "10%") == 2
    assert (
        _cli(
            monkeypatch,
            "report",
            tmp_path / "slow",
            "--compare",
            tmp_path / "base",
            "--fail-if-slower",
            "ten",
        )
        == 2
    )
    assert _cli(monkeypatch, "report", tmp_path / "missing") == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_busy_side_is_not_comparable():
    """Two runs of one config, one measured while other work held the machine: its 69x is not
    a slowdown (the issue's "68.94x slower" between two identical quick runs)."""
    base = [make_result(backend="math", latency_ms=0.076, iqr_ms=0.002)]
    new = [make_result(backend="math", latency_ms=5.24, iqr_ms=0.001)]
    new[0].provenance = {**new[0].provenance, "busy": True, "load": {"load_1m": 7.9}}
    (c,) = compare_runs(base, new)
    assert c.verdict == "busy" and c.latency_ratio == pytest.approx(5.24 / 0.076)
    assert slower_than([c], 0.10) == []
    (again,) = compare_runs(new, base)  # either side
    assert again.verdict == "busy"
