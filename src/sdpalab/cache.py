"""Where sdpalab keeps what it can rebuild (measured ceilings, converted model weights): one
directory whatever the working directory, ``$SDPALAB_CACHE_DIR`` or ``~/.cache/sdpalab``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$SDPALAB_CACHE_DIR/<parts>`` (default root ``~/.cache/sdpalab``), not created."""
    root = os.environ.get("SDPALAB_CACHE_DIR") or Path.home() / ".cache" / "sdpalab"
    return Path(root).expanduser().resolve().joinpath(*parts)
