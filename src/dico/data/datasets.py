"""The data sets `dico train` reads, and what the trainer and the sampler need to know about each."""

from dataclasses import dataclass
from pathlib import Path

import torch

from ..conditioning import ClassLabels, TextTokens
from .digits import DIGITS_CLASSES, DIGITS_RESOLUTION, DigitsDataset, digits_fingerprint
from .folders import ImageFolderDataset, folder_fingerprint
from .latents import LatentDataset, TextLatentDataset, is_latent_dir, read_meta
from .space import OutputSpace
from .vae import LATENT_SCALE, check_vae_matches


DIGITS_TEXT = "digits-text"  # the digits with captions (dico.data.digits_text), for the text-to-image demo
DEFAULT_IMAGE_SIZE = 256  # image folders, when no size is given (ImageNet 256, the paper's main setting)


@dataclass
class DataFacts:
    """What the trainer and sampler need to know about a data set."""

    in_channels: int  # channels the model sees
    resolution: int  # spatial size the model sees (latent size for latent data)
    num_classes: int  # 0 = unconditional
    vae: str | None = None  # the VAE that decodes samples (latent data), else None (pixels)
    latent_scale: float = LATENT_SCALE
    class_names: list | None = None
    fingerprint: str | None = None  # what a resumed run checks it is still training on
    latent_mean: list | None = None  # per-channel statistics of standardised latents (see OutputSpace)
    latent_std: list | None = None
    # Text data: the text encoder's record (dico.text.TextEncoder.to_dict) and the empty caption's embedding (L, D),
    # the null of caption dropout; None for class-labelled and unconditional data.
    text_encoder: dict | None = None
    null_context: torch.Tensor | None = None

    @property
    def is_text(self) -> bool:
        return self.null_context is not None

    @property
    def context_shape(self) -> tuple | None:
        """(tokens, width) of the text data's contexts, which a text model is built for (context_length,
        context_dim); None for other data."""
        return tuple(self.null_context.shape) if self.is_text else None

    @property
    def space(self) -> OutputSpace:
        return OutputSpace(self.resolution, self.in_channels, self.vae, self.latent_scale, self.latent_mean,
                           self.latent_std)

    def conditioning(self, labels):
        """What a batch's items are conditioned on: their class labels (ClassLabels, the null label is
        `num_classes`), or for text data their captions' token embeddings (TextTokens, `labels` the (N, L, D)
        contexts, the null the empty caption's)."""
        if self.is_text:
            return TextTokens(labels, self.null_context.to(labels))
        return ClassLabels(labels, self.num_classes)


# Why image folders are not encoded while training: one VAE encoder forward per image per step costs more than a
# DiCo-S training step itself (and the same again every epoch), while the posterior of an image never changes.
ENCODE_ONCE = ("training on {path} with a VAE needs its latents extracted once first: run\n"
               "  dico extract-latents --data {path} --out LATENTS_DIR --image-size {size} --vae {vae}\n"
               "(torchrun --nproc_per_node=N ... to use N GPUs) and train with --data LATENTS_DIR. Encoding on the fly "
               "would run the VAE encoder for every image at every step, which costs more than a DiCo-S step; "
               "without --vae, an image folder trains in pixel space")


def build_dataset(spec=None, image_size: int | None = None, seed: int = 0, vae=None,
                  latent_norm: str | None = None):
    """(dataset, DataFacts) for `spec`: None or "digits" -> the bundled digits; "digits-text" -> the digits with
    captions (items (pixels, caption token embeddings), see dico.data.digits_text); a directory written by
    `dico extract-latents` -> its latents (with caption embeddings: a TextLatentDataset of (latent, context)
    items and text facts) (C x h x w, normalised by `latent_norm`: see LatentDataset; decoded by its
    VAE, or by `vae` if given: ema and mse share one encoder); an image folder -> pixels at `image_size` (256 when
    None; with
    `vae`: an error asking to extract latents)."""
    if spec == DIGITS_TEXT:
        return digits_text_dataset(seed)
    if spec in (None, "digits"):
        dataset = DigitsDataset()
        return dataset, DataFacts(1, DIGITS_RESOLUTION, 10, class_names=DIGITS_CLASSES,
                                  fingerprint=digits_fingerprint())
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"--data {spec}: no such directory; pass an image folder (root/<class>/<image> or "
                                "root/<image>), a latents directory written by `dico extract-latents`, or nothing "
                                "for the bundled digits")
    if is_latent_dir(path):
        text = bool(read_meta(path).get("text_encoder"))
        dataset = (TextLatentDataset if text else LatentDataset)(path, seed=seed, latent_norm=latent_norm)
        meta, norm = dataset.meta, dataset.normalization
        channels, height, width = meta["latent_shape"]
        if height != width:
            raise ValueError(f"{path}: latents of {height}x{width}; models train on square inputs")
        decoder = check_vae_matches(meta["vae"], vae, norm["latent_mean"], norm["latent_scale"])
        facts = DataFacts(channels, height, meta["num_classes"], decoder, norm["latent_scale"], meta["class_names"],
                          fingerprint=meta.get("fingerprint"), latent_mean=norm["latent_mean"],
                          latent_std=norm["latent_std"])
        if text:  # captions instead of class labels
            facts.num_classes, facts.class_names = 0, None
            facts.text_encoder, facts.null_context = dataset.text_encoder, dataset.null_context
        return dataset, facts
    if vae is not None:
        raise ValueError(ENCODE_ONCE.format(path=spec, size=image_size or DEFAULT_IMAGE_SIZE, vae=vae))
    dataset = ImageFolderDataset(path, image_size=image_size or DEFAULT_IMAGE_SIZE, seed=seed)
    return dataset, DataFacts(3, dataset.image_size, dataset.num_classes, class_names=dataset.class_names,
                              fingerprint=folder_fingerprint(dataset.root, dataset.paths, dataset.labels))


def digits_text_dataset(seed: int = 0, encoder=None):
    """The digits with captions and their facts: pixels 1 x 8 x 8, no classes, text conditioning by the digits text
    tower (or `encoder`)."""
    from .digits_text import DigitsTextDataset, digits_text_fingerprint

    dataset = DigitsTextDataset(encoder, seed=seed)
    return dataset, DataFacts(1, DIGITS_RESOLUTION, 0, class_names=None,
                              fingerprint=digits_text_fingerprint(dataset.encoder_record),
                              text_encoder=dataset.encoder_record, null_context=dataset.null_context)
