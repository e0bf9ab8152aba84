"""Efficiency figures: parameter / MAC counts (the paper's columns) and side-by-side throughput benchmarks."""

from .counting import PAPER_COSTS, MacCounter, ModelCost, count, model_cost
from .official import load_official_module, official_twin
from .throughput import BenchConfig, BenchResult, benchmark, format_table

__all__ = ["count", "model_cost", "ModelCost", "MacCounter", "PAPER_COSTS", "official_twin", "load_official_module",
           "BenchConfig", "BenchResult", "benchmark", "format_table"]
