"""Package attributes imported on first use, so that `dico --help` and `import dico` load no torch."""

import importlib


def lazy_exports(package: str, exports: dict):
    """(__getattr__, __dir__) for `package`, whose public names live in submodules: `exports` maps name -> submodule.

    A name is imported with every other name of its submodule on first access. Submodules are attributes too
    (`dico.models`). A function named like its own submodule (`dico.sampling.generate`) is bound when its
    submodule is loaded through the package, so import such names from the package, not the submodule.
    """
    namespace = importlib.import_module(package).__dict__

    def load(name: str):
        if name in exports:
            module = importlib.import_module(f"{package}.{exports[name]}")
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
