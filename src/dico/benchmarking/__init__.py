"""Efficiency figures: parameter / MAC counts (the paper's columns) and side-by-side throughput benchmarks."""

from ..lazy import lazy_exports

SUBMODULE_EXPORTS = {
    "counting": ["count", "model_cost", "ModelCost", "MacCounter", "PAPER_COSTS"],
    "official": ["official_twin", "load_official_module"],
    "throughput": ["BenchConfig", "BenchResult", "benchmark", "format_table"],
}
EXPORTS = {name: f".{module}" for module, names in SUBMODULE_EXPORTS.items() for name in names}
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
__all__ = list(EXPORTS)
