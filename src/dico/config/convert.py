"""What `dico convert` takes: a checkpoint and the format to write it in."""

from dataclasses import dataclass
from typing import Annotated, Literal

import tyro


@dataclass
class ConvertConfig:
    """Write a checkpoint's weights as .safetensors (with the model spec, output space and objective as metadata), or
    as a diffusers pipeline folder (--format diffusers: model, scheduler, VAE, class names and a model card)."""

    source: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="SOURCE")]  # path or Hub file owner/repo/f.pt
    out: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="OUT")]  # a .safetensors file or a folder
    format: Literal["safetensors", "diffusers"] = "safetensors"
    weights: Literal["ema", "model"] = "ema"  # safetensors: which weights of a training checkpoint
    model: str | None = None  # diffusers, official checkpoints: the model name (inferred when left out)
    vae: str | None = None  # diffusers, latent models: ema | mse | a Hub id | a local VAE folder
    image_size: int = 256  # diffusers, official checkpoints: 256 or 512 px
    num_classes: int | None = None  # diffusers, official checkpoints: number of classes (1000)
    push_to_hub: str | None = None  # diffusers: also upload the folder to this Hub repo (needs network and a token)
    overwrite: bool = False  # replace an existing OUT (a folder only if it is a dico pipeline folder)
