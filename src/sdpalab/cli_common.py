"""What every CLI module shares: the consoles and the bad-input exception (exit code 2)."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # one-line errors stay one line


class BadInput(Exception):
    """Raised by commands for user errors; becomes exit code 2 with one line."""
