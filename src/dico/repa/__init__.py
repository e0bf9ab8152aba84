"""REPA for DiCo and DiT: alignment of a hidden feature map with a frozen vision encoder's patch tokens.

`RepaConfig` (stored in training checkpoints; it lives in dico.config), `RepaLoss` (the projector beside the model and
the hook that captures the aligned layer), `load_encoder` (torch.hub, timm, local files, the digits teacher) and
`repa_dataset` (training items with the encoder tokens of the same image).
"""

from ..config.repa import RESIZE_MODES, RepaConfig, repa_weight_at
from .alignment import (DICO_STAGES, RepaLoss, alignment_loss, build_projector, default_layer, feature_module,
                        resize_tokens)
from .datasets import TokensBeside, encode_dataset, repa_dataset
from .digits import DIGITS_ENCODER, digits_accuracy, load_digits_encoder, train_digits_encoder
from .encoders import DEFAULT_ENCODER, ENCODER_ALIASES, encoder_identity, load_encoder, resolve_encoder
from .networks import DigitsPatchEncoder
from .patch_encoder import PatchEncoder, read_encoder_file, save_encoder_file

__all__ = ["RepaConfig", "RESIZE_MODES", "repa_weight_at", "DICO_STAGES", "RepaLoss", "alignment_loss",
           "build_projector", "default_layer", "feature_module", "resize_tokens", "TokensBeside", "encode_dataset",
           "repa_dataset", "DIGITS_ENCODER", "digits_accuracy", "load_digits_encoder", "train_digits_encoder",
           "DEFAULT_ENCODER", "ENCODER_ALIASES", "encoder_identity", "load_encoder", "resolve_encoder",
           "DigitsPatchEncoder", "PatchEncoder", "read_encoder_file", "save_encoder_file"]
