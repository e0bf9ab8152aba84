"""Where evaluation keeps what it builds once: the digits classifier, and feature caches of read-only inputs."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """$DICO_CACHE_DIR, else $XDG_CACHE_HOME/dico, else ~/.cache/dico."""
    if os.environ.get("DICO_CACHE_DIR"):
        return Path(os.environ["DICO_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "dico"
