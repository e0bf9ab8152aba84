"""Shared test fixtures: the official release's tensors live in ../shared/fixtures beside the checkout."""

import pytest
import torch
from helpers import FIXTURES


@pytest.fixture(scope="session")
def official():
    """Tensors produced by the official DiCo release (see shared/README.md)."""
    path = FIXTURES / "official_tiny.pt"
    if not path.exists():
        pytest.fail(f"official fixtures missing at {path}: CI needs ../shared beside the checkout")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="session")
def official_model(official):
    """The official tiny DiCo with the fixture weights, in eval mode."""
    from dico.models import DiCo

    config = {k: v for k, v in official["config"].items() if k != "input_size"}
    model = DiCo(**config)
    model.load_state_dict(official["state_dict"], strict=True)
    return model.eval()
