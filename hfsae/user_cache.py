"""Where hfsae keeps what it makes for this user and machine (converted models, measured kernel paths)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "HFSAE_CACHE"


def user_cache_dir() -> Path:
    """$HFSAE_CACHE, else ~/.cache/hfsae."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "hfsae"
