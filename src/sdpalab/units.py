"""Human-readable quantities, shared by the reports and the recommendation text."""

from __future__ import annotations


def format_bytes(n: float | None) -> str:
    """Bytes in binary units: ``512 B``, ``12.0 MiB``, ``1.50 GiB``."""
    if n is None:
        return "-"
    value, sign = abs(float(n)), "-" if n < 0 else ""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            text = (
                f"{value:.0f}" if unit == "B" else f"{value:.3g}" if value < 100 else f"{value:.0f}"
            )
            return f"{sign}{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
