"""Every plot renders from a stored run into a valid, non-trivial PNG."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from report_fixtures import make_result, sweep_results, write_run
from sdpalab.attention.mods import allowed_fraction
from sdpalab.report.plots import fitted_slope, mask_density, plot_mask, render_plots
from sdpalab.run.rundir import load

SENSITIVITY = pd.DataFrame(
    {
        "axis": ["backend", "kv_quant", "mod"] * 3 + [""],
        "objective": ["latency_ms"] * 6 + ["memory"] * 3 + ["rel_fro_err"],
        "method": ["fanova"] * 3 + ["sobol"] * 3 + ["fanova"] * 3 + ["fanova"],
        "importance": [0.6, 0.1, 0.3, 0.5, 0.2, 0.3, 0.2, 0.7, 0.1, float("nan")],
        "ci_low": [0.5, 0.05, 0.2, 0.4, 0.1, 0.2, 0.1, 0.6, 0.0, float("nan")],
        "ci_high": [0.7, 0.15, 0.4, 0.6, 0.3, 0.4, 0.3, 0.8, 0.2, float("nan")],
    }
)


def assert_png(path, min_colors=8):
    """A real PNG, of a real size, with more than a few colours (not blank)."""
    assert path.exists() and path.stat().st_size > 5_000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.width >= 300 and img.height >= 200
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) >= min_colors, (path, len(colors or []))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run"), sweep_results())


def test_every_plot_from_a_stored_run(run_dir, tmp_path):
    df = load(run_dir)  # from results.csv, as a stored run is read
    # one shape's front: full attention (the sliding window has a front of its own)
    front = df[df["label"].isin(["efficient", "math"]) & (df["wl_seq_kv"] == 2048)]
    rec = front.iloc[0]["trial_id"]
    paths = render_plots(
        df,
        tmp_path,
        front=front,
        recommendation=rec,
        ceilings={"copy_gbps": 25.0},
        sensitivity=SENSITIVITY,
    )
    names = {p.name for p in paths}
    assert names == {
        "scaling.png",
        "decode_bandwidth.png",
        "kv_cache_bytes.png",
        "pareto.png",
        "sensitivity.png",
        "mask_sliding_window_window-128.png",
        "mask_document_lengths-96-160-64.png",
    }
    for path in paths:
        assert path.parent == tmp_path
        assert_png(path)


def test_pareto_per_workload_without_a_search(run_dir, tmp_path):
    paths = render_plots(sweep_results(), tmp_path)  # list of Result works as well
    pareto = sorted(p.name for p in paths if p.name.startswith("pareto"))
    # the decode shapes: each prefill shape has two masks, and masks never share a plot
    assert len(pareto) == 3 and all("S-" in name for name in pareto)


def test_nothing_applies_gives_no_plots(tmp_path):
    failed = [r for r in sweep_results() if not r.ok]
    assert render_plots(failed, tmp_path) == []
    assert render_plots([], tmp_path) == []


def test_fitted_slope():
    s = [256, 512, 1024, 2048]
    assert fitted_slope(s, [x**2 for x in s]) == pytest.approx(2.0)
    assert fitted_slope(s, [3 * x for x in s]) == pytest.approx(1.0)
    assert fitted_slope([1024], [1.0]) is None


def test_mask_density_exact_and_averaged(tmp_path):
    small, kind = mask_density("sliding_window", {"window": 3}, 6, 6)
    expected = np.array([[1 if 0 <= i - j < 3 else 0 for j in range(6)] for i in range(6)])
    assert kind == "mask" and (small == expected).all()
    # Decode-like geometry: 2 queries at the end of 6 keys (bottom-right aligned).
    tail, _ = mask_density("causal", {}, 2, 6)
    assert (tail == np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])).all()
    big, _ = mask_density("sliding_window", {"window": 512}, 4096, 4096)
    assert big.shape == (256, 256)
    want = allowed_fraction("sliding_window", {"window": 512}, 4096, 4096)
    assert big.mean() == pytest.approx(want, rel=0.03)
    bias, kind = mask_density("alibi", {}, 8, 8)
    assert kind == "bias" and bias[7, 0] < bias[7, 7] == 0
    assert_png(plot_mask("alibi", {}, 64, 64, tmp_path / "alibi.png"))
    assert_png(plot_mask("prefix_lm", {"prefix": 8}, 24, 24, tmp_path / "prefix.png"), 3)


def test_the_report_marks_the_front_that_sdpalab_pareto_prints(tmp_path, monkeypatch):
    # the HTML report marked `flash` where `sdpalab pareto` printed flash/causal and
    # eager/causal: the plots computed a front of their own (two objectives, no noise)
    import sdpalab.report.plots as plots
    from sdpalab.explore.recommend import summarize_front

    results = [
        make_result(backend="math", latency_ms=1.00, iqr_ms=0.2, peak_mem_bytes=3 << 20),
        make_result(backend="flash", latency_ms=1.05, iqr_ms=0.2, peak_mem_bytes=3 << 20),
        make_result(backend="eager", latency_ms=2.00, peak_mem_bytes=1 << 20, rel_fro_err=1e-9),
        make_result(backend="efficient", latency_ms=3.00, peak_mem_bytes=2 << 20),
    ]
    marked = []
    monkeypatch.setattr(
        plots, "plot_pareto", lambda rows, path, front=None, **kw: marked.append(set(front or ()))
    )
    render_plots(results, tmp_path)
    assert marked == [{r.trial_id for r in summarize_front(results).front}]
    # math and flash tie on latency within noise (same memory, same error): both stay
    assert len(marked[0]) == 3


def test_byte_ticks_stay_few_when_every_value_is_equal():
    # a front whose points all hold the same memory (one cache format, one shape) asked the
    # locator for millions of ticks, and the HTML report hung on its plot
    import matplotlib.pyplot as plt

    from sdpalab.report.figure import bytes_ticks

    fig, ax = plt.subplots()
    ax.scatter([1.0, 2.0], [8 * 2**20, 8 * 2**20])
    bytes_ticks(ax.yaxis, 8 * 2**20, 8 * 2**20)
    assert len(ax.yaxis.get_major_locator()()) < 20
    plt.close(fig)
