"""dico's name on the package index and its optional parts (pyproject's extras).

A plain install holds what training, sampling, evaluation and conversion need; the web demo's packages (`[demo]`)
and the test tools (`[dev]`) are extras. A part whose extra is missing says which one to install, in one line: its
error is a `MissingExtra`, which `dico` reports as "dico CMD: error: ..." with exit 2. Torch-free (dico.cli uses it).
"""

import importlib

# `dico` on the package index is an unrelated project: ours is published under this name, imported as `dico`.
DISTRIBUTION = "dico-diffusion"


class MissingExtra(ImportError):
    """An optional package that one part of dico needs is not installed: the user fixes it with one pip line."""


def install_line(extra: str) -> str:
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def require(module: str, extra: str, part: str):
    """The imported `module`, or a MissingExtra naming `extra` when `part` (say, "the web demo") cannot have it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtra(f"{part} needs {module}: {install_line(extra)}") from err
