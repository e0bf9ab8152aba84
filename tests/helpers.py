"""Helpers the tests share (imported by test modules and conftest alike)."""

from pathlib import Path

import torch

# The official release's tensors live in ../shared/fixtures beside the checkout (see shared/README.md).
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
