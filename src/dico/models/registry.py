"""The model registry: every named DiCo and DiT size, and `create_model(name, **overrides)` to build one.

A model is described by a ModelSpec {"name", "arch", "config"}: the registered name, the architecture and the
constructor's keyword arguments. Every model built here carries its spec from construction (`model.spec`), and
checkpoints store it as that plain dict, so `build_model(spec)` rebuilds the model they hold.
"""

import difflib

from .dico import DiCo
from .dico_iso import DiCoIso
from .dit import DiT
from .mmdit import MMDiT
from .text_dico import TextDiCo
from .config import ModelSpec, config_fields, resolve_config

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
# The paper's text-to-image variants (Table 3), one of each per DiCo size: suffix -> text_conditioning.
TEXT_VARIANTS = {"DWC": "dwc", "CrossAttn": "cross_attn"}
ARCHITECTURES = {DiCo.arch: DiCo, DiT.arch: DiT, TextDiCo.arch: TextDiCo, MMDiT.arch: MMDiT, DiCoIso.arch: DiCoIso}

# name -> (arch, the size's constructor arguments)
MODELS = {name: (DiCo.arch, size) for name, size in DICO_SIZES.items()}
MODELS.update(
    {f"{name}-{suffix}": (TextDiCo.arch, dict(size, text_conditioning=kind))
     for name, size in DICO_SIZES.items() for suffix, kind in TEXT_VARIANTS.items()}
)
MODELS.update(
    {f"{name}/{patch}": (DiT.arch, dict(size, patch_size=patch)) for name, size in DIT_SIZES.items() for patch in (2, 4, 8)}
)
# SiT (Ma et al., 2024) is DiT trained with flow matching: the same network without the learned variance.
MODELS.update({f"SiT-{name[4:]}/2": (DiT.arch, dict(size, patch_size=2, learn_sigma=False)) for name, size in DIT_SIZES.items()})
# The paper's Table 12: DiCo's block in SiT's isotropic stack (DiT's widths and depths, patch 2, flow matching).
MODELS.update({f"DiCo-Iso-{name[4:]}/2": (DiCoIso.arch, dict(hidden_size=size["hidden_size"], depth=size["depth"],
                                                            patch_size=2)) for name, size in DIT_SIZES.items()})
# REPA's text-to-image MMDiT: one name, sized by `depth` (width 32 * depth, depth heads); REPA trains depth 24.
MODELS["MMDiT"] = (MMDiT.arch, dict(depth=24))


def list_models() -> list:
    return list(MODELS)


def model_spec(name: str, **overrides) -> ModelSpec:
    """The spec of a registered model with `overrides` of its config, e.g. model_spec("DiCo-S", num_classes=10).

    The input-size rule: `input_size` (the latent resolution) may be given for any model. DiT needs it (its position
    table is built for one resolution, so input_size must equal the latents it will see); DiCo is fully
    convolutional (any H, W divisible by 4), has no such option and ignores it.
    """
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Valid names: {', '.join(MODELS)}")
    arch, size = MODELS[name]
    cls = ARCHITECTURES[arch]
    if "input_size" not in config_fields(cls):
        overrides.pop("input_size", None)
    return ModelSpec(name=name, arch=arch, config=resolve_config(cls, **{**size, **overrides}))


def build_model(spec: ModelSpec):
    """Build the model a spec describes: one from `model_spec`, `model.spec`, or read back from a checkpoint."""
    arch = spec.get("arch")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} in model spec; expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](name=spec.get("name"), **spec["config"])


def create_model(name: str, **overrides):
    """Build a registered model, e.g. create_model("DiCo-XL") or create_model("DiCo-S", num_classes=10)."""
    return build_model(model_spec(name, **overrides))
