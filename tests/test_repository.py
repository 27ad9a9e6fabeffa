"""What the repository promises a reader (issue 19, item 6): the README's Python examples run
verbatim as scripts, it names the case study sdpalab grew from, the ``search`` extra installs
the dashboard the docs point to, and no committed file cites a path outside the repository."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CASE_STUDY = "yash-srivastava19/sdpa_optimization"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_has_python_examples():
    assert len(python_blocks(README.read_text())) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text()))))
def test_each_readme_python_example_runs_as_a_script(index, tmp_path):
    block = python_blocks(README.read_text())[index]
    script = tmp_path / f"example_{index}.py"
    script.write_text(block)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, f"README example {index} failed:\n{block}\n{done.stderr}"
    assert done.stdout.strip(), f"README example {index} prints nothing:\n{block}"


def test_the_readme_introduces_the_case_study_and_its_repository():
    intro = README.read_text().split("\n## ", 1)[0]  # before the first section
    assert f"https://github.com/{CASE_STUDY}" in intro and "case study" in intro


def test_the_search_extra_installs_the_dashboard():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(re.match(r"optuna-dashboard\b", dep) for dep in extras["search"])


RECORDED = re.compile(r"\.(json|html|log|txt|csv|png|gz|parquet|sqlite)$")
"""Machine records (a run's provenance, a console capture): what ran where, kept as it was."""
OUTSIDE = re.compile(
    r"/work/|/root/|/home/\w|/Users/|\.\./shared|\bshared/(reference|DESIGN|STYLE)"
    r"|(?<![\w/.-])(DESIGN|STYLE)\.md"
)
"""Paths of the machine sdpalab was written on, and documents that are not in this repository."""


def test_no_committed_file_cites_a_path_outside_the_repository():
    try:
        tracked = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    found = []
    for name in tracked:
        path = ROOT / name
        if RECORDED.search(name) or not path.is_file() or name == "tests/test_repository.py":
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
