"""REPA for DiCo and DiT: alignment of a hidden feature map with a frozen vision encoder's patch tokens.

`RepaConfig` (stored in training checkpoints), `RepaLoss` (the projector beside the model and the hook that captures
the aligned layer), `load_encoder` (torch.hub, timm, local files, the digits teacher) and `repa_dataset` (training
items with the encoder tokens of the same image).
"""

from ..lazy import lazy_exports

EXPORTS = {
    **dict.fromkeys(["RepaConfig", "RESIZE_MODES", "repa_weight_at"], "..config.repa"),
    **dict.fromkeys(["DICO_STAGES", "RepaLoss", "alignment_loss", "build_projector", "default_layer",
                     "feature_module", "resize_tokens"], ".alignment"),
    **dict.fromkeys(["TokensBeside", "encode_dataset", "repa_dataset"], ".datasets"),
    **dict.fromkeys(["DIGITS_ENCODER", "digits_accuracy", "load_digits_encoder", "train_digits_encoder"], ".digits"),
    **dict.fromkeys(["DEFAULT_ENCODER", "ENCODER_ALIASES", "encoder_identity", "load_encoder", "resolve_encoder"],
                    ".encoders"),
    "DigitsPatchEncoder": ".networks",
    **dict.fromkeys(["PatchEncoder", "read_encoder_file", "save_encoder_file"], ".patch_encoder"),
}
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
__all__ = list(EXPORTS)
