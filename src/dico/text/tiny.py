"""Small CLIP-architecture text towers with seeded random weights: the text encoder of the digits demo, built on this
machine (CLIP's weights do not ship, and the demo must run offline), and a tower any test can build.

The digits tower ("dico:digits-clip") is CLIP's text architecture at width 64, 2 layers, 4 heads, over CLIP's real
BPE vocabulary and 77-token context, its weights drawn from a fixed seed. Random weights are enough for the demo:
the diffusion model learns what the token embeddings mean; the tower only has to give different captions different,
deterministic embeddings. It is written once with save_pretrained under dico's cache folder and loaded, like any
other encoder, by `load_text_encoder`.
"""

import torch

from ..cache import atomic_write, cache_dir
from ..extras import require
from .encoders import CLIP_BOS, CLIP_EOS, quiet_transformers

CLIP_VOCAB = 49408  # CLIP's BPE vocabulary: 256 bytes x 2 + 48894 merges + 2 special tokens
DIGITS_TEXT_ENCODER = "dico:digits-clip"
DIGITS_TOWER = {"width": 64, "layers": 2, "heads": 4, "seed": 0}


def tiny_clip_config(width: int = 64, layers: int = 2, heads: int = 4, length: int = 77):
    transformers = require("transformers", "text", "text encoders")
    return transformers.CLIPTextConfig(vocab_size=CLIP_VOCAB, hidden_size=width, intermediate_size=4 * width,
                                       projection_dim=width, num_hidden_layers=layers, num_attention_heads=heads,
                                       max_position_embeddings=length, bos_token_id=CLIP_BOS, eos_token_id=CLIP_EOS,
                                       pad_token_id=CLIP_EOS)


def build_tiny_clip(folder, width: int = 64, layers: int = 2, heads: int = 4, seed: int = 0, length: int = 77):
    """A CLIPTextModel of random weights drawn from `seed` (the same weights on every run), written to `folder` with
    save_pretrained (weights and config only: the tokenizer is CLIP's bundled BPE). Returns the folder."""
    transformers = require("transformers", "text", "text encoders")
    config = tiny_clip_config(width, layers, heads, length)
    with torch.random.fork_rng(devices=[]):  # the caller's global stream is left as it was
        torch.manual_seed(seed)
        model = transformers.CLIPTextModel(config)
    with quiet_transformers():
        model.save_pretrained(folder)
    return folder


def digits_text_encoder_dir():
    """The folder of the digits tower, built on first use (atomically: a concurrent or interrupted build never
    leaves a half-written folder)."""
    tower = DIGITS_TOWER
    folder = cache_dir() / "text-encoders" / (f"digits-clip-w{tower['width']}-l{tower['layers']}-h{tower['heads']}"
                                              f"-s{tower['seed']}")
    if not (folder / "config.json").is_file():
        atomic_write(folder, lambda partial: build_tiny_clip(partial, tower["width"], tower["layers"],
                                                             tower["heads"], tower["seed"]))
    return str(folder)


# dico's own names for text encoders it builds: name -> a function returning the folder to load
TEXT_ENCODER_ALIASES = {DIGITS_TEXT_ENCODER: digits_text_encoder_dir}
