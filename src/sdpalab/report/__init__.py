"""Reports: console tables, plots, the single-file HTML report, run comparison, export.

Submodules load on first use (matplotlib and pandas are not cheap), so importing
``sdpalab.report.progress`` stays light.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "render_results": "sdpalab.report.console",
    "render_run": "sdpalab.report.console",
    "render_doctor": "sdpalab.report.console",
    "render_listing": "sdpalab.report.console",
    "render_comparison": "sdpalab.report.console",
    "render_plots": "sdpalab.report.plots",
    "plot_mask": "sdpalab.report.plots",
    "plot_sensitivity": "sdpalab.report.plots",
    "write_report": "sdpalab.report.html",
    "escape": "sdpalab.report.html",
    "html_table": "sdpalab.report.html",
    "compare_runs": "sdpalab.report.compare",
    "Comparison": "sdpalab.report.compare",
    "load_results": "sdpalab.report.load",
    "export": "sdpalab.report.load",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sdpalab.report' has no attribute {name!r}")
