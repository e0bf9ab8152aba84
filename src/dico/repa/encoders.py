"""`load_encoder(name)`: the frozen vision encoders whose patch tokens REPA aligns to.

Names:
  "hub:OWNER/REPO:ENTRY"  a torch.hub model, e.g. "hub:facebookresearch/dinov2:dinov2_vitb14" (the default,
                          `DEFAULT_ENCODER`, alias "dinov2-b"); DINOv2's normed patch tokens, no cls/registers;
                          "hub:LOCAL_DIR:ENTRY" loads from a local clone (its hubconf.py)
  "timm:MODEL"            a timm model with pretrained weights, e.g. "timm:vit_base_patch14_dinov2.lvd142m"; its
                          prefix (cls/register) tokens are dropped, a CNN's last map is read as tokens
  "file:PATH" or PATH     a local file (see `patch_encoder`: TorchScript, or a state dict + config)
  "digits"                the small REPA teacher for the bundled digits (`dico.repa.digits`), trained once, cached
Hub and timm encoders see images resized to 224 px (448 for 512 px data), ImageNet mean/std, as REPA feeds them.
"""

from pathlib import Path

import torch

from ..extras import require
from .digits import DIGITS_ENCODER, load_digits_encoder
from .patch_encoder import IMAGENET_MEAN, IMAGENET_STD, PatchEncoder, file_digest, read_encoder_file

DEFAULT_ENCODER = "hub:facebookresearch/dinov2:dinov2_vitb14"
ENCODER_ALIASES = {"dinov2-s": "hub:facebookresearch/dinov2:dinov2_vits14", "dinov2-b": DEFAULT_ENCODER,
                   "dinov2-l": "hub:facebookresearch/dinov2:dinov2_vitl14",
                   "dinov2-g": "hub:facebookresearch/dinov2:dinov2_vitg14"}


def encoder_input_size(image_size: int) -> int:
    """REPA's rule: 224 px per 256 px of data (at least 224)."""
    return 224 * max(1, image_size // 256)


def resolve_encoder(name: str) -> str:
    """The name an encoder is stored under: aliases expanded, local files as "file:ABSOLUTE_PATH"."""
    name = ENCODER_ALIASES.get(str(name), str(name))
    if name.startswith("hub:"):
        repo, _, entry = name[len("hub:"):].rpartition(":")
        return f"hub:{Path(repo).resolve()}:{entry}" if repo and Path(repo).is_dir() else name
    if name.startswith("timm:") or name == DIGITS_ENCODER:
        return name
    path = Path(name[len("file:"):] if name.startswith("file:") else name).expanduser()
    if path.is_file():
        return f"file:{path.resolve()}"
    raise ValueError(f"unknown encoder {name!r}: use hub:OWNER/REPO:ENTRY (default {DEFAULT_ENCODER}), "
                     f"timm:MODEL, {DIGITS_ENCODER!r}, an alias ({', '.join(ENCODER_ALIASES)}) or an existing file")


def encoder_identity(name: str) -> str:
    """What distinguishes an encoder's features: its resolved name, plus the content hash of a local file."""
    name = resolve_encoder(name)
    if name.startswith("file:"):
        return f"{name}#{file_digest(name[len('file:'):])}"
    return name


def load_encoder(name: str = DEFAULT_ENCODER, image_size: int = 256, device="cpu") -> PatchEncoder:
    """A frozen PatchEncoder for `name` (see the module doc) feeding data of `image_size` px; its `.name` is the
    encoder's identity (`encoder_identity`)."""
    name = resolve_encoder(name)
    if name == DIGITS_ENCODER:
        encoder = load_digits_encoder()
    elif name.startswith("file:"):
        encoder = read_encoder_file(name[len("file:"):], name=name)
    elif name.startswith("hub:"):
        encoder = _hub_encoder(name, encoder_input_size(image_size))
    else:
        encoder = _timm_encoder(name, encoder_input_size(image_size))
    encoder.name = encoder_identity(name)  # what extraction stores and training checks
    return encoder.to(device)


def _hub_encoder(name: str, input_size: int) -> PatchEncoder:
    repo, _, entry = name[len("hub:"):].rpartition(":")
    if not repo or not entry:
        raise ValueError(f"torch.hub encoder names read hub:OWNER/REPO:ENTRY (or hub:LOCAL_DIR:ENTRY), got {name!r}")
    if Path(repo).is_dir():  # a local clone holding hubconf.py: no network, no hub cache
        return PatchEncoder(torch.hub.load(repo, entry, source="local", trust_repo=True, verbose=False), name,
                            input_size, 3, IMAGENET_MEAN, IMAGENET_STD)
    hub_dir = Path(torch.hub.get_dir())
    try:
        backbone = torch.hub.load(repo, entry, trust_repo=True, verbose=False)
    except Exception as err:  # offline: URLError/HTTPError (OSError), or hubconf's own download errors
        owner, _, repo_name = repo.partition("/")
        raise FileNotFoundError(
            f"could not load the encoder {name} through torch.hub ({type(err).__name__}: {err}). Offline, torch.hub "
            f"needs the repository code in {hub_dir / f'{owner}_{repo_name}_main'} and the weights in "
            f"{hub_dir / 'checkpoints'} (for DINOv2-B: dinov2_vitb14_pretrain.pth). Run `python -c \"import torch; "
            f"torch.hub.load('{repo}', '{entry}')\"` where there is network and copy {hub_dir} (set by $TORCH_HOME) "
            "to this machine, or pass a local encoder file") from err
    return PatchEncoder(backbone, name, input_size, 3, IMAGENET_MEAN, IMAGENET_STD)


def _timm_encoder(name: str, input_size: int) -> PatchEncoder:
    timm = require("timm", "timm", f"the encoder {name}")
    model_name = name[len("timm:"):]
    try:
        try:  # ViTs: position embeddings resampled to REPA's input size; other models take any size
            backbone = timm.create_model(model_name, pretrained=True, num_classes=0, img_size=input_size)
        except TypeError:
            backbone = timm.create_model(model_name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError) as err:  # huggingface_hub's offline and not-found errors are OSErrors
        repo = model_name if "/" in model_name else f"timm/{model_name}"
        raise FileNotFoundError(
            f"could not load the timm encoder {model_name} ({type(err).__name__}: {err}). timm reads its weights from "
            f"the Hugging Face cache ($HF_HOME/hub, default ~/.cache/huggingface/hub): run `hf download "
            f"{repo}` where there is network, copy that cache here and set HF_HUB_OFFLINE=1") from err
    config = backbone.pretrained_cfg
    return PatchEncoder(backbone, name, input_size, 3, config.get("mean", IMAGENET_MEAN),
                        config.get("std", IMAGENET_STD), prefix_tokens=getattr(backbone, "num_prefix_tokens", 0))
