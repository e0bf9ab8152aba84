"""What `dico extract-latents` and `dico export-data` take."""

from dataclasses import dataclass
from typing import Annotated, Literal

from tyro.conf import Positional, arg

from ..threads import Threads, check_threads


@dataclass(kw_only=True)
class ExtractLatentsConfig:
    """Store the VAE posterior (mean, std) of every image and of its mirror image under --out, for latent training.
    Split over GPUs with torchrun; rerun the same command to resume an interrupted run."""

    data: str  # image folder: root/<class>/<image> or root/<image>
    out: str  # latents directory to write (pass it to `dico train --data`)
    image_size: int = 256  # center-crop size in pixels
    vae: str = "ema"  # ema | mse (stabilityai/sd-vae-ft-*), a Hub id or a local directory
    batch_size: int = 64  # images per process per VAE forward
    num_workers: int = 4  # image decoding processes per process
    dtype: Literal["float16", "float32"] = "float16"  # storage precision (float16: 16 KiB per 256px image + mirror)
    device: str | None = None  # cpu, cuda, cuda:1 ... (None: the local GPU if any)
    max_batches: int | None = None  # stop each process after this many batches (resume later)
    progress: bool = True  # progress bar
    threads: Threads = "auto"  # CPU threads: N, or auto (the cores other processes leave free; torch's default on GPU)
    repa_encoder: str | None = None
    """REPA: also store this frozen encoder's patch tokens (dico.repa.load_encoder: dinov2-b, hub:..., timm:...,
    a file, digits); on a finished extraction, adds them without running the VAE again."""
    text_encoder: str | None = None
    """Text-to-image: --data is a captioned folder (a COCO 2014 split such as COCO/train2014 beside
    COCO/annotations/captions_train2014.json, or a folder with a Hugging Face metadata.jsonl of file_name and text);
    also store every caption's token embeddings by this text encoder (openai/clip-vit-large-patch14 as the paper,
    any Hugging Face text encoder by Hub id or folder, dico:digits-clip)."""
    captions: str | None = None  # with --text-encoder: the captions file (COCO .json or metadata.jsonl) if not found
    crop: Literal["adm", "uvit"] | None = None
    """How images become --image-size squares: adm (ADM's crop, the official DiCo's) or uvit (central square,
    LANCZOS: U-ViT's COCO crop, behind REPA's COCO latents); default adm for image folders, uvit with --text-encoder."""

    def __post_init__(self):
        check_threads(self.threads)


@dataclass(kw_only=True)
class ExportDataConfig:
    """Write a bundled data set as an ADM-format .npz (an FID reference)."""

    name: Annotated[Positional[Literal["digits"]], arg(metavar="NAME")]  # the data set (digits: the demo's images)
    out: str  # the .npz file to write
    overwrite: bool = False  # replace an existing --out (checked by dico.data.export_digits before any work)
