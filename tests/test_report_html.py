"""The single-file HTML report: self-contained, escaped, and rendered by a real browser."""

import re
import shutil
import subprocess

import pytest
from PIL import Image

from report_fixtures import EVIL, make_result, sweep_results, write_run
from sdpalab.report.html import escape, html_table, write_report

SECTIONS = ("summary", "plots", "extra-0", "failures", "provenance")
EVIL_REASON = '<img src=x onerror="alert(2)"> & friends'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    results = sweep_results()
    results[-1].reason = EVIL_REASON
    run = write_run(tmp_path_factory.mktemp("run"), results, name=EVIL)
    section = (
        "Recommendation",
        "<p>pick " + escape(EVIL) + "</p>" + html_table(["axis", "value"], [["backend", "<flex>"]]),
    )
    return write_report(run, extra_sections=[section])


def test_self_contained_and_escaped(report):
    text = report.read_text()
    assert report.name == "report.html"
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in text
    assert "<script" not in text.lower()  # no script of ours, none of the user's
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt; &amp; friends" in text
    assert "&lt;flex&gt;" in text
    # Nothing to fetch: every image is inline, no URL anywhere in a src or href.
    srcs = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert srcs and all(s.startswith(("data:image/png;base64,", "#")) for s in srcs)
    assert "http://" not in text and "https://" not in text
    plots = sorted(p.name for p in (report.parent / "plots").glob("*.png"))
    assert text.count("<img ") == len(plots) >= 6
    assert (report.parent / "results.parquet").exists()


def test_rerun_replaces_old_plots(tmp_path):
    run = write_run(tmp_path, [make_result(backend="math", seq=s) for s in (256, 512)])
    (tmp_path / "plots").mkdir()
    stale, mine = tmp_path / "plots" / "pareto_old.png", tmp_path / "plots" / "notes.png"
    stale.write_bytes(b"old")
    mine.write_bytes(b"user file")
    text = write_report(run).read_text()
    assert not stale.exists() and mine.exists()
    assert "no failures" in text and text.count("<img ") == 1  # the scaling plot only


def _chromium(tmp_path, *args, timeout=90):
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    return subprocess.run(
        [CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.slow  # a headless browser in a subprocess
@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (make test installs "
    "Debian's chromium; apt-get install -y chromium)",
)
def test_headless_chromium_renders_it(report, tmp_path):
    url = report.resolve().as_uri()
    shot = tmp_path / "shot.png"
    done = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", url)
    assert shot.exists(), done.stderr[-2000:]
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        assert rgb.size == (1280, 2400)
        colors = rgb.getcolors(maxcolors=1 << 24)
    assert len(colors) > 50, "screenshot looks blank"
    background = max(colors)[0] / (rgb.width * rgb.height)
    assert background < 0.9, "screenshot is mostly one colour"

    dom = _chromium(tmp_path, "--dump-dom", url).stdout
    assert "<html" in dom, "no DOM dumped"
    for sid in SECTIONS:
        assert f'id="{sid}"' in dom
    for heading in ("Summary", "Plots", "Recommendation", "Failures", "Provenance"):
        assert f"<h2>{heading}</h2>" in dom
    # The evil run name is text in the page, not an element: no script element exists.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert "<script" not in dom.lower()
    assert "<img src=x" not in dom and '&lt;img src=x onerror="alert(2)"&gt;' in dom
    assert dom.count('src="data:image/png;base64,') >= 6
