"""The model registry: every named DiCo and DiT size, and `create_model(name, **overrides)` to build one."""

import difflib
from dataclasses import asdict

from .dico import DiCo, DiCoConfig
from .dit import DiT, DiTConfig

# Official DiCo sizes (hidden width C, stage depths [enc1, enc2, mid, dec2, dec1], FFN ratio).
DICO_SIZES = {
    "DiCo-S": dict(hidden_size=128, depth=[5, 4, 4, 4, 4], mlp_ratio=2),
    "DiCo-B": dict(hidden_size=256, depth=[5, 4, 4, 4, 4], mlp_ratio=2),
    "DiCo-L": dict(hidden_size=352, depth=[9, 8, 9, 8, 9], mlp_ratio=2),
    "DiCo-XL": dict(hidden_size=416, depth=[9, 9, 10, 9, 9], mlp_ratio=2),
    "DiCo-H": dict(hidden_size=416, depth=[14, 12, 10, 12, 14], mlp_ratio=4),
    # Not a paper size: small enough to train on a laptop CPU in minutes (the digits demo).
    "DiCo-Tiny": dict(hidden_size=32, depth=[2, 2, 2, 2, 2], mlp_ratio=2),
}
DIT_SIZES = {
    "DiT-S": dict(depth=12, hidden_size=384, num_heads=6),
    "DiT-B": dict(depth=12, hidden_size=768, num_heads=12),
    "DiT-L": dict(depth=24, hidden_size=1024, num_heads=16),
    "DiT-XL": dict(depth=28, hidden_size=1152, num_heads=16),
}
ARCHITECTURES = {"dico": (DiCo, DiCoConfig), "dit": (DiT, DiTConfig)}

MODELS = {name: ("dico", cfg) for name, cfg in DICO_SIZES.items()}
MODELS.update(
    {f"{name}/{patch}": ("dit", dict(cfg, patch_size=patch)) for name, cfg in DIT_SIZES.items() for patch in (2, 4, 8)}
)


def list_models() -> list:
    return list(MODELS)


def model_spec(name: str, **overrides) -> dict:
    """{"name", "arch", "config"}: everything needed to rebuild the model (saved in our checkpoints)."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Valid names: {', '.join(MODELS)}")
    arch, defaults = MODELS[name]
    cls, config_cls = ARCHITECTURES[arch]
    if arch == "dico":
        overrides.pop("input_size", None)  # DiCo is fully convolutional: any H, W divisible by 4
    fields = set(config_cls.__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"{name} has no option(s) {unknown}; valid options: {sorted(fields)}")
    config = asdict(config_cls(**{**defaults, **overrides}))
    return {"name": name, "arch": arch, "config": config}


def build_model(spec: dict):
    """Rebuild a model from a spec written by `model_spec` (e.g. read back from a checkpoint)."""
    arch = spec.get("arch")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} in model spec; expected one of {sorted(ARCHITECTURES)}")
    cls, config_cls = ARCHITECTURES[arch]
    model = cls.from_config(config_cls(**spec["config"]))
    model.name = spec.get("name", arch)
    return model


def create_model(name: str, **overrides):
    """Build a registered model, e.g. create_model("DiCo-XL") or create_model("DiCo-S", num_classes=10)."""
    return build_model(model_spec(name, **overrides))

