"""Inception-v3 features exactly as ADM's evaluator reads them from the 2015-12-05 TensorFlow graph, in PyTorch.

torch-fidelity's `FeatureExtractorInceptionV3` ports that graph (weights converted from it, TF1's bilinear resize and
its average-pool quirks reproduced). ADM reads three things from the graph:
- `pool_3` (2048-d): FID and precision/recall;
- `mixed_6/conv` (17x17x192, NHWC in TF), first 7 channels, flattened in (H, W, C) order (2023-d): sFID. torch-fidelity
  converts `mixed_6/conv` into `Mixed_6d.branch1x1` (conv, batchnorm, ReLU: the TF node of that name is the ReLU), which
  its forward does not expose, so a forward hook reads it;
- `pool_3 @ softmax/weights` without the bias (1008 logits), torch-fidelity's "logits_unbiased": Inception Score.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3

INCEPTION_WEIGHTS_URL = URL_INCEPTION_V3
INCEPTION_WEIGHTS_FILENAME = URL_INCEPTION_V3.rsplit("/", 1)[-1]  # weights-inception-2015-12-05-6726825d.pth
SPATIAL_MODULE = "Mixed_6d.branch1x1"  # ADM's "mixed_6/conv"
SPATIAL_CHANNELS = 7  # ADM keeps channels [:7] of mixed_6/conv: 7 x 17 x 17 = 2023 features
LAYOUT_VERSION = "adm1"  # bump if what a feature layer means ever changes, to invalidate caches


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_weights_file(path: Path) -> None:
    """Refuse before torch-fidelity unpickles it (it does so without `weights_only`) anything but plain tensors."""
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights file {path} not found; download {INCEPTION_WEIGHTS_URL} and pass its path"
        )
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path} is not a readable PyTorch weights file holding only tensors ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); expected torch-fidelity's {INCEPTION_WEIGHTS_FILENAME}"
        ) from err
    if not isinstance(state_dict, dict) or "Mixed_6d.branch1x1.conv.weight" not in state_dict:
        raise ValueError(
            f"{path} is not a torch-fidelity Inception-v3 state dict (no 'Mixed_6d.branch1x1.conv.weight'); "
            f"expected {INCEPTION_WEIGHTS_FILENAME} from {INCEPTION_WEIGHTS_URL}"
        )


def _downloaded_weights() -> Path:
    """torch-fidelity's own download (into the torch hub cache), done here so that failure says what to do."""
    target = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILENAME
    if not target.is_file():
        try:
            torch.hub.load_state_dict_from_url(INCEPTION_WEIGHTS_URL, progress=True, map_location="cpu")
        except Exception as err:  # offline, a proxy, a firewall: the user can fetch the file and point to it
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConnectionError(
                f"could not download the Inception weights ({reason}); on an offline machine fetch "
                f"{INCEPTION_WEIGHTS_URL} elsewhere and pass it with --inception-weights FILE "
                f"(inception_weights=... in Python), or place it at {target}") from err
    return target


@contextlib.contextmanager
def exact_float32():
    """Keep float32 convolutions and matmuls in full precision (no TF32), as TensorFlow computed ADM's numbers."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class InceptionFeatures:
    """ADM's Inception features of uint8 NHWC images: {"pool": 2048, "spatial": 2023, "logits": 1008}."""

    kind = "inception"
    layers = {"pool": 2048, "spatial": SPATIAL_CHANNELS * 17 * 17, "logits": 1008}
    stored_layers = ("pool", "logits")  # precision/recall, Inception Score
    statistics_layers = ("pool", "spatial")  # FID, sFID

    def __init__(self, weights=None, device="cpu"):
        path = Path(weights).expanduser() if weights is not None else _downloaded_weights()
        _check_weights_file(path)
        self.weights_path = path
        self.identity = f"inception-{LAYOUT_VERSION}-{_file_sha256(path)[:12]}"
        self.device = torch.device(device)
        try:
            self.network = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
            )
        except RuntimeError as err:  # load_state_dict: missing/unexpected keys or wrong shapes
            raise ValueError(f"{path} does not fit torch-fidelity's Inception-v3: {err}") from err
        self.network.to(self.device)
        self._spatial = None
        self.network.get_submodule(SPATIAL_MODULE).register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module, inputs, output):
        # NCHW -> NHWC before flattening, the order TensorFlow's reshape used for ADM's mu_s / sigma_s.
        self._spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(output), -1).float()

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # gray to RGB by replication, as ADM's 3-channel graph input needs
        with exact_float32():
            pool, logits = self.network(x.contiguous())
        spatial, self._spatial = self._spatial, None
        return {"pool": pool.cpu().numpy(), "spatial": spatial.cpu().numpy(), "logits": logits.cpu().numpy()}


def default_inception_weights_location() -> str:
    """Where torch-fidelity's download lands (honours TORCH_HOME)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_WEIGHTS_FILENAME)
