"""Tiny CLIPs with random weights and CLIP's real tokenizer, written as transformers writes downloaded ones, and a tiny
text-to-image checkpoint around one.

The tokenizer is dico.text's CLIPTokenizer over the BPE vocabulary open-clip-torch ships (openai's token ids,
offline); only the weights are random (the real ViT-L/14 is 1.7 GB).
"""

from pathlib import Path

import torch

CLIP_VOCAB_SIZE = 49408


def save_tiny_clip(folder, seed: int = 0, image_size: int = 32, width: int = 32, projection: int = 16) -> Path:
    """A CLIPModel (2-layer towers, 32 wide) and its CLIPProcessor saved into `folder`: what CLIP score reads."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from dico.text import clip_bpe_tokenizer

    folder = Path(folder)
    tower = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=77, **tower),
                        vision_config=dict(image_size=image_size, patch_size=8, **tower), projection_dim=projection)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": image_size},
                                crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=images, tokenizer=clip_bpe_tokenizer()).save_pretrained(folder)
    return folder


TINY_TEXT = {"hidden_size": 16, "depth": [1, 1, 1, 1, 1]}  # a text DiCo that samples 8x8 in milliseconds


def save_tiny_text_checkpoint(path, tower_folder, model: str = "DiCo-S-DWC", std: float = 0.05, null=None,
                              **overrides) -> Path:
    """A tiny pixel-space (8x8 grey) text-conditioned model saved as one of our checkpoints, its text encoder a
    CLIP text tower (dico.text.build_tiny_clip) in `tower_folder`, recorded as training records it. Every weight is
    drawn from N(0, std^2) (seeded), so that prompts change the output. `null`: a function of the encoder giving
    the `null_context` to record (training records the empty caption's tokens), None to record none."""
    from dico.checkpoints import atomic_save
    from dico.models import build_model, model_spec
    from dico.text import build_tiny_clip, load_text_encoder

    if not (Path(tower_folder) / "config.json").is_file():
        build_tiny_clip(tower_folder, width=32, layers=1, heads=2, seed=0)
    encoder = load_text_encoder(tower_folder)
    sizes = {} if model == "MMDiT" else TINY_TEXT
    spec = model_spec(model, in_channels=1, input_size=8, context_dim=encoder.dim, context_length=encoder.length,
                      **{**sizes, **overrides})
    network = build_model(spec)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    extra = {} if null is None else {"null_context": null(encoder)}
    atomic_save({"ema": network.state_dict(), "model": network.state_dict(), "spec": spec, "step": 1,
                 "space": {"resolution": 8, "channels": 1, "vae": None, "latent_scale": 0.18215},
                 "text_encoder": encoder.to_dict(), **extra}, path)
    return Path(path)
