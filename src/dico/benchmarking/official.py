"""Run the official implementation (shallowdream204/DiCo) side by side with ours, on the same weights.

The official code is never part of this package: the user points at a checkout of it and we import its
`dico_models.py` / `dit_models.py` from there at run time (its DiT needs `timm`). Our state dicts use the official
parameter names, so the official model loads our weights strictly and both compute the same function.
"""

import importlib.util
import sys
from pathlib import Path

import torch

from ..models import model_spec

OFFICIAL_FILES = {"dico": "dico_models.py", "dit": "dit_models.py"}


def load_official_module(path, arch: str):
    """Import the official `dico_models` or `dit_models` module from the checkout at `path`."""
    if arch not in OFFICIAL_FILES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(OFFICIAL_FILES)}")
    file = Path(path) / OFFICIAL_FILES[arch]
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: --official must point at a checkout of shallowdream204/DiCo")
    name = f"_official_{arch}_models"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as err:
        raise RuntimeError(f"could not import the official {file.name} ({err}); the official DiT needs `timm`") from err
    sys.modules[name] = module
    return module


def official_twin(model: torch.nn.Module, path) -> torch.nn.Module:
    """The official implementation of the registered model `model` (built by `dico.create_model`), holding a copy
    of its weights. Only the paper's configurations exist there (no ablation options)."""
    name, arch = model.spec["name"], model.spec["arch"]
    if name is None:
        raise ValueError("official_twin needs a model built by dico.create_model (model.spec names its size)")
    module = load_official_module(path, arch)
    config = model.config
    defaults = model_spec(name)["config"]
    if arch == "dico":
        for key in ("channel_attention", "kernel_size", "activation"):
            if getattr(config, key) != defaults[key]:
                raise ValueError(f"the official release has no {key}={getattr(config, key)!r}; compare default models")
        # The official size factories ignore their keyword arguments, so build the class with our sizes.
        twin = module.DiCo(in_channels=config.in_channels, hidden_size=config.hidden_size, depth=list(config.depth),
                           mlp_ratio=config.mlp_ratio, class_dropout_prob=config.class_dropout_prob,
                           num_classes=config.num_classes, learn_sigma=config.learn_sigma)
    else:
        twin = module.DiT_models[name](input_size=config.input_size, in_channels=config.in_channels,
                                       num_classes=config.num_classes, learn_sigma=config.learn_sigma,
                                       class_dropout_prob=config.class_dropout_prob)
    twin.load_state_dict(model.state_dict(), strict=True)
    return twin.to(next(model.parameters()).device)
