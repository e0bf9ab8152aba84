"""CLIP score of text-to-image samples against their prompts: torchmetrics' `CLIPScore` with a CLIP model on disk.

The score is torchmetrics': 100 x the cosine of each image's and its prompt's CLIP embeddings, averaged over the
samples, the mean clamped at 0 (torchmetrics 1.9 clamps the mean, not each pair as Hessel et al.'s CLIPScore does;
with a trained CLIP the cosines of images and captions are positive and the two agree). Images go through the CLIP
model's own processor (resize, centre crop, normalise); prompts longer than the model's context are cut to it, as
torchmetrics does.

The CLIP model is a folder written by transformers' `save_pretrained` (CLIPModel and CLIPProcessor, e.g. a download
of `openai/clip-vit-large-patch14`) or a Hub name already in the local Hugging Face cache: dico never downloads it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..threads import ThreadPolicy
from .images import ImageSource, iter_image_batches


def _features_tensor(output) -> torch.Tensor:
    # transformers >= 5 returns a BaseModelOutputWithPooling whose pooler_output is the projected embedding; 4.x
    # returned the tensor itself. torchmetrics 1.9 expects the tensor (Lightning-AI/torchmetrics#3407).
    return output if torch.is_tensor(output) else output.pooler_output


class _ProjectedFeatures(torch.nn.Module):
    """A CLIPModel whose get_image_features / get_text_features give the projected embeddings as tensors, as
    torchmetrics' CLIPScore reads them, under any transformers version."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return _features_tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return _features_tensor(self.model.get_text_features(*args, **kwargs))


def load_clip(name_or_path):
    """(CLIPModel, CLIPProcessor) from a local folder or the local Hugging Face cache, never from the network. A
    missing folder or an incomplete one is a ValueError / FileNotFoundError saying what is expected."""
    from transformers import CLIPModel, CLIPProcessor

    text = str(name_or_path)
    path = Path(text).expanduser()
    looks_like_path = path.is_absolute() or text.startswith((".", "~")) or path.exists() or text.count("/") != 1
    if looks_like_path and not path.is_dir():
        raise FileNotFoundError(f"CLIP model folder {path} does not exist (expected a folder written by transformers' "
                                f"save_pretrained holding a CLIPModel and its CLIPProcessor)")
    source = str(path) if looks_like_path else text
    try:
        model = CLIPModel.from_pretrained(source, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as err:
        where = f"{path}" if looks_like_path else (f"{text} (no such folder, and not in the local Hugging Face cache: "
                                                   f"dico never downloads it)")
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot load a CLIP model and processor from {where}: {reason}") from err
    return model.eval(), processor


class ClipScorer:
    """torchmetrics' CLIPScore over a local CLIP model, fed uint8 NHWC batches and their prompts."""

    def __init__(self, name_or_path, device="cpu"):
        from torchmetrics.multimodal.clip_score import CLIPScore

        model, processor = load_clip(name_or_path)
        self.name = str(name_or_path)
        self.device = torch.device(device)
        self.metric = CLIPScore(model_name_or_path=lambda: (_ProjectedFeatures(model), processor)).to(self.device)

    @torch.inference_mode()
    def update(self, images: np.ndarray, prompts: list[str]) -> None:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey to RGB, as for Inception
        self.metric.update(x, list(prompts))

    def compute(self) -> float:
        return float(self.metric.compute())


def clip_score(source: ImageSource, prompts: list[str], clip_model, *, batch_size: int = 32, device="cpu",
               progress: bool = True, threads=None) -> float:
    """torchmetrics' CLIP score of the images of `source` against `prompts` (one per image, in order).
    `clip_model`: a local CLIP folder (or a Hub name in the local cache) or a ClipScorer already loaded; `threads` as
    for feature extraction."""
    if len(prompts) != source.count:
        raise ValueError(f"{source.path} holds {source.count} images but {len(prompts)} prompts were given")
    scorer = clip_model if isinstance(clip_model, ClipScorer) else ClipScorer(clip_model, device)
    scorer.metric.reset()
    done = 0
    cpu_threads = ThreadPolicy(threads, device)
    with cpu_threads, tqdm(total=source.count, unit="img", desc=f"CLIP score of {source.path.name}",
                           disable=not progress, file=sys.stderr, leave=False) as bar:  # fmt: skip
        for batch in iter_image_batches(source, batch_size):
            cpu_threads()
            scorer.update(batch, prompts[done : done + len(batch)])
            done += len(batch)
            bar.update(len(batch))
    return scorer.compute()
