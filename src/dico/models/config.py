"""How a model records its config: its constructor keyword arguments are its config, declared once in the signature
(as diffusers' register_to_config does). `model.config` holds them, defaults filled in; `model.spec` adds the
registered name and the architecture, which is what a checkpoint needs to rebuild the model.
"""

import copy
import functools
import inspect
from typing import TypedDict


class ModelConfig(dict):
    """A model's constructor arguments: a plain JSON-able dict whose keys also read as attributes
    (`model.config.hidden_size`)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no field {key!r}") from None


class ModelSpec(TypedDict):
    """Everything needed to rebuild a model: `build_model(spec)`. Stored in checkpoints as this plain dict."""

    name: str | None  # the registered name ("DiCo-S"), None for a model built from its class directly
    arch: str  # "dico" | "dit"
    config: dict  # the constructor's keyword arguments


def config_fields(cls) -> list:
    """The config fields of a model class: the keyword arguments of its constructor, except `name`."""
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "name")]


def resolve_config(cls, **kwargs) -> dict:
    """The full config `cls(**kwargs)` records: every field, defaults filled in, tuples as lists (JSON-able)."""
    unknown = sorted(set(kwargs) - set(config_fields(cls)))
    if unknown:
        raise TypeError(f"{cls.__name__} has no option(s) {unknown}; valid options: {sorted(config_fields(cls))}")
    bound = inspect.signature(cls.__init__).bind_partial(**kwargs)
    bound.apply_defaults()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in bound.arguments.items() if k in config_fields(cls)}


def records_config(init):
    """Decorates a model's `__init__(self, *, name=None, **config)`: after construction the model carries
    `model.config` (a ModelConfig) and `model.spec` (a ModelSpec with the class's `arch`)."""

    @functools.wraps(init)
    def wrapper(self, *, name=None, **kwargs):
        init(self, **kwargs)
        if type(self).__init__ is not wrapper:  # a subclass's __init__ called this one: the subclass records its own
            return
        config = resolve_config(type(self), **kwargs)
        self.config = ModelConfig(config)
        self.spec = ModelSpec(name=name, arch=self.arch, config=copy.deepcopy(config))

    return wrapper
