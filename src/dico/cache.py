"""Where dico keeps what it builds once (the digits classifier of Digits-FID, the REPA digits teacher, feature caches
of read-only inputs), and how it writes and reuses such a file."""

import os
import shutil
from pathlib import Path

from .interrupts import stop_if_signalled
from .options import honour_umask


def cache_dir() -> Path:
    """$DICO_CACHE_DIR, else $XDG_CACHE_HOME/dico, else ~/.cache/dico."""
    if os.environ.get("DICO_CACHE_DIR"):
        return Path(os.environ["DICO_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "dico"


def atomic_write(path, write, suffix: str = "") -> Path:
    """`write(partial)` to a file or folder beside `path`, then put it in place of `path` (`replace_with`): readers
    never see a half-written file, and a replaced folder never mixes old and new files. `write` creates the file, so
    it gets the permissions the umask gives new files. `suffix` ends the partial file's name, for writers that would
    append one (np.savez adds ".npz"). A failed or interrupted write leaves no partial file and the old `path` as it
    was."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial{suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(partial)
        if partial.is_file():  # safetensors' writer and mkstemp make files private (a folder's writer sees to its own)
            honour_umask(partial)
        stop_if_signalled()  # a swallowed Ctrl-C must not make the output final
        replace_with(partial, path)
    except BaseException:
        remove(partial)
        raise
    return path


def replace_with(partial, path) -> None:
    """The one rename step of every output dico writes: the finished `partial` (a file or a folder) becomes `path`.
    A file replaces atomically (os.replace). A folder cannot be renamed over a non-empty one, so the old folder is
    first moved aside, the new one renamed in, and the old one deleted only then; if the second rename fails or is
    interrupted, the old folder is put back."""
    partial, path = Path(partial), Path(path)
    if not partial.is_dir() or not path.exists():
        os.replace(partial, path)
        return
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    os.replace(path, old)
    try:
        os.replace(partial, path)
    except BaseException:
        os.replace(old, path)
        raise
    remove(old)


def remove(path) -> None:
    """Delete a file or folder if it is there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
