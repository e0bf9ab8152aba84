"""A tiny CLIP with random weights and CLIP's real tokenizer, written as transformers writes a downloaded one.

CLIP's BPE vocabulary ships inside open-clip-torch (bpe_simple_vocab_16e6.txt.gz); vocab and merges are built from it
the way CLIP's own tokenizer builds them, so the tokenizer gives openai's token ids offline. Only the weights are
random (the real ViT-L/14 is 1.7 GB).
"""

import gzip
from functools import lru_cache
from pathlib import Path

CLIP_VOCAB_SIZE = 49408


@lru_cache(maxsize=1)
def clip_vocabulary():
    """(vocab, merges) of CLIP's tokenizer, from open_clip's copy of the BPE file."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in merges]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == CLIP_VOCAB_SIZE
    return {token: i for i, token in enumerate(tokens)}, merges


def clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocabulary()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges))


def save_tiny_clip(folder, seed: int = 0, image_size: int = 32, width: int = 32, projection: int = 16) -> Path:
    """A CLIPModel (2-layer towers, 32 wide) and its CLIPProcessor saved into `folder`; returns the folder."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = Path(folder)
    tower = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=77, **tower),
                        vision_config=dict(image_size=image_size, patch_size=8, **tower), projection_dim=projection)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": image_size},
                                crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=images, tokenizer=clip_tokenizer()).save_pretrained(folder)
    return folder
