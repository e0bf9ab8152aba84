"""Where dico keeps what it builds once (the digits classifier of Digits-FID, the REPA digits teacher, feature caches
of read-only inputs), and how it writes and reuses such a file."""

import os
from pathlib import Path

from .options import honour_umask


def cache_dir() -> Path:
    """$DICO_CACHE_DIR, else $XDG_CACHE_HOME/dico, else ~/.cache/dico."""
    if os.environ.get("DICO_CACHE_DIR"):
        return Path(os.environ["DICO_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "dico"


def atomic_write(path, write, suffix: str = "") -> Path:
    """`write(partial)` to a file beside `path`, then rename it to `path`: readers never see a half-written file.
    `write` creates the file, so it gets the permissions the umask gives new files. `suffix` ends the partial file's
    name, for writers that would append one (np.savez adds ".npz"). A failed write leaves no partial file behind."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial{suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(partial)
        honour_umask(partial)  # safetensors' writer makes its files private
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def cached(path, build, write, read, damaged=(Exception,)):
    """Build once, then reuse: `read(path)` when the file is there; else `build()`, written as `write(value, file)`
    (atomically, see `atomic_write`) and read back, so the first call returns what every later one will. A file
    that `read` fails on with one of the `damaged` errors is a damaged cache entry: rebuilt, not trusted."""
    path = Path(path)
    if path.is_file():
        try:
            return read(path)
        except damaged:
            path.unlink(missing_ok=True)
    value = build()
    atomic_write(path, lambda partial: write(value, partial))
    return read(path)
