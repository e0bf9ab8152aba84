"""Package attributes imported on first use, so that `dico --help` and `import dico` load no torch."""

import importlib
import sys
import types


def lazy_exports(package: str, exports: dict):
    """(__getattr__, __dir__) for `package`, whose public names live in other modules: `exports` maps each name to
    its module, relative to the package (".generate", "..data.space").

    A name is imported with every other name of its module on first access. Submodules are attributes too
    (`dico.models`). A function named like its own submodule (`dico.sampling.generate`) stays the package attribute
    once that submodule is imported, as with an eager `from .generate import generate`.
    """
    namespace = sys.modules[package].__dict__

    class Package(types.ModuleType):
        def __setattr__(self, name, value):
            # The import system sets `package.generate = <submodule>` after importing it: keep the function.
            if isinstance(value, types.ModuleType) and exports.get(name) == f".{name}" and hasattr(value, name):
                value = getattr(value, name)
            super().__setattr__(name, value)

    sys.modules[package].__class__ = Package

    def load(name: str):
        if name in exports:
            module = importlib.import_module(exports[name], package)
            for exported, source in exports.items():
                if source == exports[name]:
                    namespace[exported] = getattr(module, exported)
            return namespace[name]
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    def names() -> list:
        return sorted(set(namespace) | set(exports))

    return load, names
