"""dico's packages form layers: a module imports only from its own layer or lower ones, and no two packages import
each other. Read from the source with `ast` (every import, those inside functions too), so nothing is imported."""

import ast
from pathlib import Path

import dico

SOURCE = Path(dico.__file__).parent

# Lowest first. A unit is a subpackage (models/) or a top-level module (checkpoints.py); "dico" is the package's
# own __init__, which re-exports names from above. Units of one layer may import each other (no cycle, though).
# dico.cli (commands by module name) and dico/__init__ (PEP 562) also import with importlib, downwards too.
LAYERS = [
    ["options", "extras", "interrupts", "threads"],  # config files, value checks, optional parts, signals, CPU threads: torch-free
    ["randomness", "images", "distributed", "cpu_allocator", "cache", "tensors",
     "conditioning"],  # conditioning: what a model is given (labels, text tokens) with its null; models build examples
    ["models"],
    ["diffusion", "transport", "meanflow"],  # the objectives' numerics (meanflow builds on transport's path)
    ["objectives", "text"],  # objectives: torch-free at import, the processes below load where they run; text: the
    # text encoders, whose prompts become a TextTokens conditioning
    ["config"],  # every options dataclass (TrainConfig inherits the objectives' settings): torch-free
    ["data"],
    ["checkpoints"],
    ["evaluation", "repa"],
    ["sampling"],
    ["pipelines"],
    ["training"],
    ["benchmarking"],  # times training steps with the trainer's optimizer
    ["demo"],
    ["commands"],
    ["cli"],
    ["dico"],
]
LAYER = {unit: level for level, units in enumerate(LAYERS) for unit in units}
UNITS = {p.stem for p in SOURCE.iterdir()
         if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
TORCH_FREE = {"options", "extras", "interrupts", "config", "cli", "cpu_allocator", "dico"}  # what `dico --help` runs
HEAVY = ("torch", "torchvision", "diffusers", "gradio")


def unit_of(module: str) -> str:
    """The unit of a dotted name inside dico: dico.models.dico -> models; dico and dico.__version__ -> dico."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in UNITS else "dico"


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list:
    """(line, absolute module name) of every import in `path`; `from pkg import name` yields pkg.name too, since
    the name may be a submodule."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            found.append((node.lineno, source))
            found += [(node.lineno, f"{source}.{alias.name}") for alias in node.names]
    return found


def dico_imports() -> list:
    """(importing module, its unit, line, imported unit) for every import of one unit by another (`import dico` and
    `from .. import x` alone name no unit: their x does)."""
    edges = []
    for path in sorted(SOURCE.rglob("*.py")):
        name = module_name(path)
        for line, target in imports(path):
            if target.split(".")[0] == "dico" and target != "dico" and unit_of(name) != unit_of(target):
                edges.append((name, unit_of(name), line, unit_of(target)))
    return edges


def test_every_unit_has_a_layer():
    assert UNITS - set(LAYER) == set(), "add new packages and modules to LAYERS"


def test_imports_run_down_the_layers_only():
    upward = [f"{name}:{line} imports dico.{target}, a layer above {unit}"
              for name, unit, line, target in dico_imports() if LAYER[target] > LAYER[unit]]
    assert upward == []


def test_no_import_cycles_between_units():
    graph = {}
    for _, unit, _, target in dico_imports():
        graph.setdefault(unit, set()).add(target)
    done, cycles = set(), []

    def visit(unit, path):
        if unit in path:
            cycles.append(" -> ".join(path[path.index(unit):] + [unit]))
            return
        if unit in done:
            return
        for target in sorted(graph.get(unit, ())):
            visit(target, path + [unit])
        done.add(unit)

    for unit in sorted(graph):
        visit(unit, [])
    assert cycles == []


def test_what_dico_help_runs_imports_no_torch():
    heavy = [f"{module_name(path)}:{line} imports {target}" for path in sorted(SOURCE.rglob("*.py"))
             if unit_of(module_name(path)) in TORCH_FREE
             for line, target in imports(path) if target.split(".")[0] in HEAVY]
    assert heavy == []
