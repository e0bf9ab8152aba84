"""Text encoders for text-to-image models: prompts -> token embeddings (N, tokens, width), and their null (the empty
caption). Needs the `[text]` extra (transformers, open-clip-torch)."""

from .encoders import (CLIP_BOS, CLIP_EOS, DEFAULT_TEXT_ENCODER, TextEncoder, clip_bpe_tokenizer,
                       is_local_text_encoder, load_text_encoder, resolve_text_encoder)
from .tiny import DIGITS_TEXT_ENCODER, TEXT_ENCODER_ALIASES, build_tiny_clip, digits_text_encoder_dir

__all__ = ["TextEncoder", "load_text_encoder", "resolve_text_encoder", "is_local_text_encoder", "clip_bpe_tokenizer",
           "DEFAULT_TEXT_ENCODER", "CLIP_BOS", "CLIP_EOS", "DIGITS_TEXT_ENCODER", "TEXT_ENCODER_ALIASES",
           "build_tiny_clip", "digits_text_encoder_dir"]
