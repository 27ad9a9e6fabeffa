"""The layout rules of docs/architecture.md, checked on the source by `tests/import_graph.py`."""

from __future__ import annotations

import import_graph


def test_no_private_imports_across_modules():
    # A module that needs another's `_private` names is one concept cut in two
    # (docs/architecture.md).
    problems = import_graph.private_imports()
    assert not problems, f"{len(problems)} private imports across modules:\n" + "\n".join(problems)


def test_no_import_cycles():
    graph = import_graph.import_graph()
    # The checker found the package: an empty graph would pass for the wrong reason.
    assert "sdpalab.cli" in graph and any(graph.values())
    found = [" -> ".join(cycle) for cycle in import_graph.cycles(graph)]
    assert not found, "\n".join(found) + "\n(python tests/import_graph.py --where: their imports)"


def test_data_flows_one_way():
    # spec -> build -> run -> rundir -> explore -> report (docs/architecture.md): nothing
    # imports upward.
    problems = import_graph.upward_imports()
    assert not problems, "\n".join(problems)


def test_the_checker_sees_lazy_relative_and_reexported_imports(tmp_path):
    # A tree with one of each case, so the two tests above cannot pass by seeing nothing.
    files = {
        "src/sdpalab/__init__.py": "",
        "src/sdpalab/pkg/__init__.py": "from .sub import thing, _hidden\nfrom . import other\n",
        "src/sdpalab/pkg/sub.py": (
            "from typing import TYPE_CHECKING\n"
            "from sdpalab.pkg import other\n"  # the submodule, not pkg/__init__: no cycle via it
            "if TYPE_CHECKING:\n    from sdpalab.top import T\n"  # never runs: no edge
            "def thing(): pass\ndef _hidden(): pass\n"
        ),
        "src/sdpalab/pkg/other.py": "def f():\n    from ..top import _t\n",
        "src/sdpalab/top.py": "import sdpalab.pkg.sub\ndef _t(): pass\nT = 1\n",
        "tests/test_x.py": "from sdpalab.top import _t\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)

    assert import_graph.private_imports(tmp_path) == [
        "src/sdpalab/pkg/__init__.py:1: imports _hidden from sdpalab.pkg.sub",
        "src/sdpalab/pkg/other.py:2: imports _t from sdpalab.top",
        "tests/test_x.py:1: imports _t from sdpalab.top",
    ]
    assert import_graph.cycle_lines(tmp_path) == [
        "import cycle: sdpalab.pkg.other -> sdpalab.top -> sdpalab.pkg.sub -> sdpalab.pkg.other"
    ]
