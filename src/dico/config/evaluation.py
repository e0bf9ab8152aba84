"""What `dico evaluate` takes: the two image sets and how to compare them."""

from dataclasses import dataclass
from typing import Annotated, Literal

from tyro.conf import Positional, arg

from ..options import check_int
from ..threads import Threads, check_threads


@dataclass
class EvaluateConfig:
    """Compare SAMPLES with REFERENCE, each an ADM-format .npz (arr_0: uint8 N x H x W x C) or a folder of png/jpg
    images: FID, sFID, Inception Score, precision and recall (ADM's evaluator). A reference .npz with precomputed
    mu/sigma/mu_s/sigma_s (ADM reference batches) uses them for FID/sFID. Features are cached next to each input.
    Text-to-image: a reference folder of photographs (COCO's val2014) is read centre-cropped with --reference-size
    256; --clip-model adds the CLIP score of samples that carry their prompts."""

    reference: Annotated[Positional[str], arg(metavar="REFERENCE")]  # e.g. VIRTUAL_imagenet256_labeled.npz
    samples: Annotated[Positional[str], arg(metavar="SAMPLES")]  # .npz (e.g. from `dico sample`) or image folder
    features: Literal["inception", "digits"] = "inception"
    """inception: ADM's metrics; digits: offline Digits-FID and class accuracy for the digits demo (not comparable
    with ImageNet FID)."""
    inception_weights: str | None = None
    """Local copy of the Inception weights (dico.evaluation.INCEPTION_WEIGHTS_URL) for offline machines (None:
    download once)."""
    batch_size: int | None = None  # images per batch (None: 200 on CUDA, 32 on CPU)
    device: str | None = None  # cuda, cuda:1, cpu, ... (None: cuda when available)
    json: str | None = None  # also write the metrics to this JSON file
    overwrite: bool = False  # replace an existing --json file
    cache: bool = True  # read and write feature caches
    quiet: bool = False  # no progress bars
    threads: Threads = "auto"  # CPU threads: N, or auto (the cores other processes leave free; torch's default on GPU)
    reference_size: int | None = None
    """Read a REFERENCE folder's images resized and centre-cropped to this many pixels, as COCO's val2014 is prepared
    at 256 for text-to-image FID (None: the folder's images must share one size)."""
    reference_crop: Literal["uvit", "adm"] = "uvit"
    """How --reference-size crops: uvit (central square, LANCZOS: U-ViT's COCO preparation, behind the COCO
    statistics REPA and DiCo report FID against) or adm (ADM's ImageNet center_crop_arr)."""
    clip_model: str | None = None
    """Also compute the CLIP score (torchmetrics) of SAMPLES against their prompts (an .npz's 'prompts', a folder's
    metadata.jsonl), with this CLIP model: a local folder (transformers' save_pretrained, e.g. a download of
    openai/clip-vit-large-patch14) or a Hub name already in the local cache; never downloaded."""

    def __post_init__(self):
        check_threads(self.threads)
        check_int("reference_size", self.reference_size, 1, none_ok=True)
