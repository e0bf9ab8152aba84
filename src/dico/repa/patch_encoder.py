"""A frozen vision backbone seen as patch tokens, and the local encoder file formats.

Every encoder takes images as the data pipeline yields them ((N, C, H, W) in [-1, 1] at the data set's size) and
applies its own preprocessing: the channels it expects, resizing to its input size (bicubic, as REPA does) and its
mean/std normalisation. It returns float32 patch tokens (N, T, D) without class or register tokens.

Local files, either
  - TorchScript (`torch.jit.save`), whose forward returns (N, T, D) tokens or a (N, D, h, w) map, with an optional
    extra file "dico_encoder.json" holding the preprocessing keys below; or
  - a `torch.save`d dict {"format": "dico-encoder/1", "arch": one of `networks.ARCHITECTURES`, "config": kwargs,
    "state_dict", and the preprocessing keys}.
Preprocessing keys: "input_size" (None: as given), "channels", "mean", "std" (per channel, on [0, 1] pixels),
"prefix_tokens" (leading tokens to drop).
"""

import hashlib
import json
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .networks import ARCHITECTURES

ENCODER_FORMAT = "dico-encoder/1"
SCRIPT_META = "dico_encoder.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESSING = {"input_size": None, "channels": 3, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                 "prefix_tokens": 0}


class PatchEncoder(nn.Module):
    """`backbone` with its preprocessing; call it on images in [-1, 1] for (N, T, D) float32 patch tokens."""

    def __init__(self, backbone: nn.Module, name: str, input_size: int | None = None, channels: int = 3,
                 mean=PREPROCESSING["mean"], std=PREPROCESSING["std"], prefix_tokens: int = 0):
        super().__init__()
        self.backbone = backbone.eval()
        for param in backbone.parameters():  # (ScriptModules have no requires_grad_)
            param.requires_grad_(False)
        self.name, self.input_size, self.channels, self.prefix_tokens = name, input_size, int(channels), prefix_tokens
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: BatchNorm/dropout stay in inference mode

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[1] != self.channels:
            if x.shape[1] == 1:
                x = x.expand(-1, self.channels, -1, -1)
            elif self.channels == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise ValueError(f"encoder {self.name} takes {self.channels}-channel images, got {x.shape[1]}")
        x = (x + 1) / 2
        size = self.input_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images.to(self.mean.device))
        features = self.backbone.forward_features(x) if hasattr(self.backbone, "forward_features") else self.backbone(x)
        if isinstance(features, dict):  # DINOv2's hub models: normed patch tokens without cls/register tokens
            features = features["x_norm_patchtokens"]
        elif features.ndim == 4:
            features = features.flatten(2).transpose(1, 2)
        elif self.prefix_tokens:
            features = features[:, self.prefix_tokens:]
        return features.float()

    @torch.no_grad()
    def token_shape(self, image_size: int) -> tuple:
        """(T, D) of the tokens of one image of `image_size`, from one forward."""
        probe = torch.zeros(1, self.channels, image_size, image_size, device=self.mean.device)
        return tuple(self(probe).shape[1:])


def file_digest(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def save_encoder_file(path, module: nn.Module, arch: str | None = None, config: dict | None = None,
                      torchscript: bool = False, **preprocessing) -> Path:
    """Write `module` as a local encoder file: a state dict of a known `arch` (+ `config`), or TorchScript."""
    unknown = set(preprocessing) - set(PREPROCESSING)
    if unknown:
        raise TypeError(f"unknown preprocessing keys {sorted(unknown)}; valid: {sorted(PREPROCESSING)}")
    prep = {**PREPROCESSING, **preprocessing}
    prep = {k: list(v) if isinstance(v, tuple) else v for k, v in prep.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if torchscript:
        scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
        torch.jit.save(scripted, str(path), _extra_files={SCRIPT_META: json.dumps(prep)})
    else:
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown encoder architecture {arch!r}; known: {sorted(ARCHITECTURES)} (or save "
                             "TorchScript with torchscript=True)")
        torch.save({"format": ENCODER_FORMAT, "arch": arch, "config": dict(config or {}),
                    "state_dict": module.state_dict(), **prep}, path)
    return path


def is_torchscript(path) -> bool:
    """TorchScript archives carry their code (zip entries ARCHIVE/code/...); torch.save's zip files do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(entry.split("/")[1:2] == ["code"] for entry in archive.namelist())


def read_encoder_file(path, name: str | None = None) -> PatchEncoder:
    """A PatchEncoder from a local file written by `save_encoder_file` (or any TorchScript module)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"encoder file {path} does not exist")
    name = name or f"file:{path.resolve()}"
    if is_torchscript(path):
        extra = {SCRIPT_META: ""}
        backbone = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        prep = {**PREPROCESSING, **(json.loads(extra[SCRIPT_META]) if extra[SCRIPT_META] else {})}
    else:  # a state dict + config (tried as TorchScript, it would only earn torch.jit's deprecation warning)
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # unpickling errors of every kind: not our format either
            saved = None
        if not isinstance(saved, dict) or saved.get("format") != ENCODER_FORMAT:
            raise ValueError(f"{path} is neither TorchScript nor a {ENCODER_FORMAT} file (save_encoder_file writes "
                             "both)") from None
        if saved["arch"] not in ARCHITECTURES:
            raise ValueError(f"{path}: unknown encoder architecture {saved['arch']!r}; known: {sorted(ARCHITECTURES)}")
        backbone = ARCHITECTURES[saved["arch"]](**saved["config"])
        backbone.load_state_dict(saved["state_dict"])
        prep = {k: saved.get(k, v) for k, v in PREPROCESSING.items()}
    return PatchEncoder(backbone, name, **prep)
