"""Reading and writing checkpoints, safely, and the one loader of pretrained models.

Reads official DiCo/DiT training checkpoints ({"model", "ema", "opt", "args"}), bare state dicts, .safetensors files
and our own training checkpoints, from a local path or a Hugging Face Hub file ("owner/repo/file.pt"). Pickles are
read with `weights_only=True`: a file that tries to run code is refused before anything is built from it.

`load_pretrained` is the single way from a file to a usable model: `dico.load_model`, `dico sample`, the
benchmarks and evaluation all go through it, and training resumes read their checkpoint through `read_checkpoint`.
"""

import argparse
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .data import OutputSpace, resolve_vae
from .models import MODELS, build_model, model_spec

# What every checkpoint without its own record was trained with: the official recipe's iDDPM process.
DDPM_OBJECTIVE = {"kind": "ddpm", "noise_schedule": "linear", "diffusion_steps": 1000}

# Prefixes added by DistributedDataParallel and torch.compile; a state dict saved from a wrapper loads all the same.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
HUB_PATTERN = re.compile(r"^(?:hf://)?([\w.-]+/[\w.-]+)/(.+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def resolve_source(source) -> Path:
    """A local file, or a Hugging Face Hub file "owner/repo/path/in/repo" (downloaded and cached when online)."""
    path = Path(source).expanduser()
    if path.exists():
        if path.is_dir():
            raise CheckpointError(f"{source} is a directory, not a checkpoint file")
        return path
    match = HUB_PATTERN.match(str(source))
    if match is None or str(source).startswith(("/", ".", "~")):
        raise FileNotFoundError(f"checkpoint not found: {source}")
    from huggingface_hub import hf_hub_download

    repo_id, filename = match.groups()
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as err:  # offline, unknown repo or file: say which and why
        raise FileNotFoundError(
            f"{source} is not a local file and could not be fetched from the Hugging Face Hub "
            f"(repo {repo_id!r}, file {filename!r}): {type(err).__name__}: {err}"
        ) from err


def read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable .safetensors file: {err}") from err
    try:
        facts = {key: json.loads(metadata[f"dico_{key}"]) for key in ("spec", "space", "objective")
                 if f"dico_{key}" in metadata}
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: unreadable dico metadata ({err})") from err
    return {"weights": state, "spec": None, **facts}


def read_pickle(path: Path):
    try:
        # argparse.Namespace is the only non-tensor object official checkpoints hold (their "args").
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text or "Unsupported operand" in text:
            raise CheckpointError(
                f"refused to load {path}: it holds Python objects beyond tensors and plain containers, which could "
                f"run code when unpickled. Only weights are read. (detail: {text.splitlines()[0]})"
            ) from err
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {err}") from err


def strip_wrappers(state_dict: dict) -> dict:
    out = {}
    for key, value in state_dict.items():
        for prefix in WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def read_checkpoint(source) -> dict:
    """The whole checkpoint as a dict, without executing code.

    A training checkpoint (official or ours) is returned as stored; bare weights (a state dict or .safetensors)
    come back as {"weights": state_dict, "spec": spec or None}.
    """
    path = resolve_source(source)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    obj = read_pickle(path)
    if is_state_dict(obj):
        return {"weights": obj, "spec": None}
    if not isinstance(obj, dict) or not any(k in obj for k in ("model", "ema")):
        kind = type(obj).__name__ if not isinstance(obj, dict) else f"dict with keys {sorted(map(str, obj))[:8]}"
        raise CheckpointError(f"{path} is not a DiCo/DiT checkpoint: expected a state dict or a dict with "
                              f"'model'/'ema' entries, found a {kind}")
    return obj


def select_weights(ckpt: dict, weights: str, source) -> dict:
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    if "weights" in ckpt:  # bare weights: only one set
        state = ckpt["weights"]
    elif weights in ckpt:
        state = ckpt[weights]
    else:
        raise CheckpointError(f"{source} has no {weights!r} weights; it holds {sorted(ckpt)}")
    if not is_state_dict(state):
        raise CheckpointError(f"{source}: entry {weights!r} is not a state dict of tensors")
    return strip_wrappers(state)


def load_checkpoint(source, weights: str = "ema") -> dict:
    """The state dict in `source`: for a training checkpoint, its "ema" (default) or "model" weights.

    A bare state dict or a .safetensors file has only one set of weights, returned whatever `weights` says.
    """
    return select_weights(read_checkpoint(source), weights, source)


def stored_spec(ckpt: dict) -> dict | None:
    """The model spec our checkpoints carry (training checkpoints, converted .safetensors), or None.

    Official checkpoints carry only argparse args, whose builders ignored overrides: their weights tell more.
    """
    spec = ckpt.get("spec")
    return spec if isinstance(spec, dict) else None


def infer_spec(state_dict: dict) -> dict | None:
    """Guess the model a state dict was trained as: architecture, named size and the overrides it needs."""
    sd = state_dict
    if "x_embedder.proj.weight" not in sd:
        return None
    stem = sd["x_embedder.proj.weight"]
    width, in_channels = stem.shape[0], stem.shape[1]
    if "t_embedder_1.mlp.0.weight" in sd:  # DiCo
        stages = ["encoder_level_1", "encoder_level_2", "latent", "decoder_level_2", "decoder_level_1"]
        depth = [len({k.split(".")[1] for k in sd if k.startswith(stage + ".")}) for stage in stages]
        ffn = sd.get("encoder_level_1.0.conv4.weight")
        mlp_ratio = ffn.shape[0] / width if ffn is not None else 2.0
        rows = sd["y_embedder.embedding_table_0.weight"].shape[0]
        out_channels = sd["final_layer.out_proj.weight"].shape[0]
        config = dict(hidden_size=width, depth=depth, mlp_ratio=mlp_ratio, in_channels=in_channels,
                      learn_sigma=out_channels == 2 * in_channels)
        arch, names = "dico", [n for n in MODELS if MODELS[n][0] == "dico"]
    else:  # DiT
        patch = stem.shape[-1]
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        rows = sd["y_embedder.embedding_table.weight"].shape[0]
        out_channels = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
        grid = int(round(sd["pos_embed"].shape[1] ** 0.5)) if "pos_embed" in sd else 16
        config = dict(hidden_size=width, depth=depth, patch_size=patch, in_channels=in_channels,
                      learn_sigma=out_channels == 2 * in_channels, input_size=grid * patch)
        arch, names = "dit", [n for n in MODELS if MODELS[n][0] == "dit"]
    # With label dropout the table has one extra (null) row; official models always train with dropout.
    config["num_classes"] = rows - 1
    for name in names:
        defaults = MODELS[name][1]
        if all(config.get(k) == v for k, v in defaults.items() if k in config):
            overrides = {k: v for k, v in config.items() if k not in defaults}
            return model_spec(name, **overrides)
    return {"name": None, "arch": arch, "config": config}


def describe_spec(spec) -> str:
    if spec is None:
        return "an unrecognised network"
    cfg = spec["config"]
    extras = ", ".join(f"{k}={cfg[k]}" for k in ("num_classes", "in_channels", "learn_sigma") if k in cfg)
    name = spec["name"] or f"an unnamed {spec['arch']} (hidden_size={cfg.get('hidden_size')}, depth={cfg.get('depth')})"
    return f"{name} ({extras})"


def load_weights(model: torch.nn.Module, state_dict: dict, source: str = "checkpoint") -> torch.nn.Module:
    """load_state_dict(strict=True) with an error that names what differs and what the checkpoint looks like."""
    state_dict = strip_wrappers(state_dict)
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict) if state_dict[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        def head(items):
            return ", ".join(items[:6]) + (f" ... (+{len(items) - 6} more)" if len(items) > 6 else "")

        lines = [f"{source} does not fit {getattr(model, 'name', type(model).__name__)}:"]
        if shapes:
            lines.append(f"  shape mismatches: {head(shapes)}")
        if missing:
            lines.append(f"  missing keys: {head(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys: {head(unexpected)}")
        lines.append(f"  the checkpoint looks like {describe_spec(infer_spec(state_dict))}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)
    return model


@dataclass
class Pretrained:
    """A loaded model and what it outputs: `space` (pixels or latents and their decoder) and `objective` (how it was
    trained, hence how to sample it); `checkpoint` is the raw dict read, for callers that need more of it."""

    model: torch.nn.Module
    space: OutputSpace | None  # None: the file does not say (bare weights of a non-latent model)
    objective: dict
    checkpoint: dict
    source: str

    def output_space(self) -> OutputSpace:
        """The space samples are drawn in; an error naming what to do when the file does not record it."""
        if self.space is None:
            raise CheckpointError(
                f"{self.source} records neither its model nor what its samples are, and it is not an ImageNet "
                f"latent model ({self.model.in_channels} input channels, official models have 4): sample from the "
                "training checkpoint or a file written by `dico convert`, which record both; for official "
                "checkpoints, pass --model, e.g. --model DiCo-XL")
        return self.space


def stored_space(ckpt: dict) -> OutputSpace | None:
    space = ckpt.get("space")
    return OutputSpace(**space) if isinstance(space, dict) else None


def stored_objective(ckpt: dict) -> dict:
    """How the weights were trained; checkpoints written before objectives were recorded are the official DDPM."""
    if isinstance(ckpt.get("objective"), dict):
        return dict(ckpt["objective"])
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    return {**DDPM_OBJECTIVE, **{k: config[k] for k in ("noise_schedule", "diffusion_steps") if k in config}}


def load_pretrained(source, name: str | None = None, weights: str = "ema", image_size: int = 256, vae=None,
                    num_classes: int | None = None, **overrides) -> Pretrained:
    """Build the model a checkpoint holds, load its weights (eval mode) and say what it outputs.

    The model comes from the spec our files carry, else from `name` (+ `num_classes` and other overrides), else it is
    inferred from the weights' names and shapes (official checkpoints). Files without a recorded output space are
    the official ImageNet latent models: SD-VAE latents of `image_size` pixels, decoded by `vae` (default "ema").
    `vae` also replaces the decoder of a latent model (ema and mse share one encoder).
    """
    ckpt = read_checkpoint(source)
    state = select_weights(ckpt, weights, source)
    spec = stored_spec(ckpt)
    if spec is not None:
        if name is not None and name != spec["name"]:
            raise CheckpointError(f"{source} holds {spec['name']}, not {name}; leave the model name out for "
                                  "checkpoints that record their model")
    elif name is not None:
        if num_classes is not None:
            overrides["num_classes"] = num_classes
        spec = model_spec(name, **{"input_size": image_size // 8, **overrides})
    else:
        spec = infer_spec(state)
        if spec is None:
            raise CheckpointError(f"cannot tell which model {source} holds; name it (e.g. 'DiCo-XL')")
    space = stored_space(ckpt)
    if space is None and spec["config"]["in_channels"] == 4:  # what official checkpoints are
        space = OutputSpace.latent(image_size, resolve_vae(vae or "ema"))
    elif vae is not None and space is not None:
        if space.vae is None:
            raise CheckpointError(f"{source} holds a pixel-space model: it has no VAE to replace")
        space.vae = resolve_vae(vae)
    model = load_weights(build_model(spec), state, str(source)).eval()
    return Pretrained(model, space, stored_objective(ckpt), ckpt, str(source))


def load_model(source, name: str | None = None, weights: str = "ema", **overrides) -> torch.nn.Module:
    """The model a checkpoint holds, with its weights, in eval mode (see `load_pretrained`)."""
    return load_pretrained(source, name, weights, **overrides).model


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: a crash never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def convert(source, out, weights: str = "ema") -> Path:
    """Write the chosen weights of any readable checkpoint as .safetensors, with the model spec as metadata."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"output must end in .safetensors, got {out}")
    ckpt = read_checkpoint(source)
    state = select_weights(ckpt, weights, source)
    spec = stored_spec(ckpt) or infer_spec(state)
    # What `dico sample` needs besides the weights travels along: the model, its output space, its objective.
    metadata = {"format": "pt", "dico_objective": json.dumps(stored_objective(ckpt))}
    if spec:
        metadata["dico_spec"] = json.dumps(spec)
    space = stored_space(ckpt)
    if space is not None:
        metadata["dico_space"] = json.dumps(asdict(space))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, out)
    return out


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="write a checkpoint's weights as .safetensors")
    p.add_argument("source", help="checkpoint path or Hub file (owner/repo/file.pt)")
    p.add_argument("out", help="output .safetensors path")
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.set_defaults(func=lambda a: print(f"wrote {convert(a.source, a.out, a.weights)}"))
