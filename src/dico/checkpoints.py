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
import pickletools
import re
import tempfile
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .cache import atomic_write
from .data import OutputSpace, check_vae_matches, resolve_vae
from .interrupts import stop_if_signalled
from .models import MODELS, build_model, model_spec
from .objectives import Objective, objective_from_dict
from .options import check_new_output, new_file_mode

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
    hub_like = match is not None and not str(source).startswith(("/", ".", "~"))
    # A relative path whose first folder exists here (e.g. results/checkpoints/x.pt) is a local file, never a Hub id.
    if hub_like and not str(source).startswith("hf://") and Path(str(source).split("/", 1)[0]).exists():
        hub_like = False
    if not hub_like:
        raise FileNotFoundError(f"no such file: {source}")
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
    except (SafetensorError, OSError) as err:  # the library checks the header and that offsets fit the file
        raise CheckpointError(f"{path} is not a readable .safetensors file (truncated or corrupt?): {err}") from err
    if "dico_crc32" in metadata:  # files we write carry a checksum per tensor; safetensors itself has none
        expected = json.loads(metadata["dico_crc32"])
        damaged = sorted(k for k, v in state.items() if expected.get(k) != tensor_crc32(v))
        if damaged:
            raise CheckpointError(f"{path} is damaged: tensor(s) {', '.join(damaged[:5])} fail their CRC-32 check; "
                                  "the file was corrupted on disk or in transfer, download or copy it again")
    try:
        facts = {key: json.loads(metadata[f"dico_{key}"]) for key in ("spec", "space", "objective", "text_encoder")
                 if f"dico_{key}" in metadata}
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: unreadable dico metadata ({err})") from err
    if NULL_CONTEXT_TENSOR in state:  # a text model's recorded null travels beside its weights, not among them
        facts["null_context"] = state.pop(NULL_CONTEXT_TENSOR)
    return {"weights": state, "spec": None, **facts}


# The name a converted text model's null context (the empty caption's tokens training recorded) has in its
# .safetensors file; read_safetensors takes it out of the weights.
NULL_CONTEXT_TENSOR = "dico.null_context"


def tensor_crc32(t: torch.Tensor) -> int:
    return zlib.crc32(t.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy())


def read_pickle(path: Path):
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): an interrupted download or copy?")
    if zipfile.is_zipfile(path):
        verify_zip(path)
    else:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"PK":  # a zip archive without its directory at the end: cut short
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): a zip "
                                  f"archive of {size} bytes without its central directory")
        if head[:1] != b"\x80":  # every pickle since protocol 2, torch.save's legacy format included, starts so
            raise CheckpointError(f"{path} is not a PyTorch checkpoint: neither a zip archive written by torch.save "
                                  f"nor a pickle ({size} bytes starting {head.hex()})")
    try:
        # argparse.Namespace is the only non-tensor object official checkpoints hold (their "args").
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err)
        lowered = text.lower()
        refused = "global" in lowered or "unsupported class" in lowered or (
            "unsupported operand" in lowered and well_formed_pickle(path))  # e.g. protocol 4 objects
        if "weights only load failed" in lowered and refused:
            detail = next((line for line in text.splitlines() if "global" in line.lower()), text.splitlines()[0])
            raise CheckpointError(
                f"refused to load {path}: it holds Python objects beyond tensors and plain containers, which could "
                f"run code when unpickled. Only weights are read. (detail: {detail.strip()})"
            ) from err
        detail = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {detail}") from err


def well_formed_pickle(path: Path) -> bool:
    """Whether a plain (non-zip) file parses as a pickle, without running it."""
    if zipfile.is_zipfile(path):
        return False
    try:
        for _ in pickletools.genops(path.read_bytes()):
            pass
    except Exception:  # any parse failure means: not a pickle
        return False
    return True


def verify_zip(path: Path) -> None:
    """Check every member of a torch.save archive against its CRC-32 (torch.load never does), naming the tensor
    whose bytes are damaged."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is None:
                return
            owner = storage_owners(archive).get(bad.rsplit("/", 1)[-1]) if "/data/" in bad else None
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as err:
        raise CheckpointError(f"{path} is damaged (truncated or corrupt archive): {err}") from err
    what = f"tensor {owner!r} (member {bad})" if owner else f"member {bad}"
    raise CheckpointError(f"{path} is damaged: {what} fails its CRC-32 check; the file was corrupted on disk or in "
                          "transfer, download or copy it again")


def storage_owners(archive: zipfile.ZipFile) -> dict:
    """{storage key: name of the first tensor stored in it}, read from the archive's pickle without running it.

    torch.save pickles each tensor as its dict key, then a persistent id ('storage', type, key, location, numel);
    we follow the strings pushed (directly or from the memo) and read the key and the name before it.
    """
    pickle_name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
    if pickle_name is None:
        return {}
    strings, memo, owners, top = [], {}, {}, None
    try:
        for opcode, arg, _ in pickletools.genops(archive.read(pickle_name)):
            name = opcode.name
            if "UNICODE" in name or "STRING" in name:
                top = arg
                strings.append(arg)
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[arg] = top
            elif name == "MEMOIZE":
                memo[len(memo)] = top
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                top = memo.get(arg)
                if isinstance(top, str):
                    strings.append(top)
            elif name == "BINPERSID" and len(strings) >= 4 and strings[-3] == "storage":
                owners.setdefault(strings[-2], strings[-4])
                top = None
            else:
                top = None
    except (ValueError, zipfile.BadZipFile):  # a damaged pickle: name what we could
        pass
    return owners


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
    if "joint_blocks.0.x_block.attn.qkv.weight" in sd:  # MMDiT (REPA's text-to-image model): sized by its depth
        return mmdit_spec(sd, in_channels)
    if "t_embedder_1.mlp.0.weight" in sd and "y_embedder.embedding_table_0.weight" not in sd:
        return None  # a text-conditioned DiCo: its context length and kernel options are not in the weights
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
    elif "blocks.0.conv1.weight" in sd:  # DiCo-Iso: DiCo blocks in an isotropic stack
        patch = stem.shape[-1]
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        out_channels = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
        config = dict(hidden_size=width, depth=depth, patch_size=patch, in_channels=in_channels,
                      mlp_ratio=sd["blocks.0.conv4.weight"].shape[0] / width,
                      learn_sigma=out_channels == 2 * in_channels)
        rows = sd["y_embedder.embedding_table.weight"].shape[0]
        arch, names = "dico-iso", [n for n in MODELS if MODELS[n][0] == "dico-iso"]
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


def mmdit_spec(sd: dict, in_channels: int) -> dict:
    patch = sd["x_embedder.proj.weight"].shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("joint_blocks.")})
    out_channels = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
    grid = int(round(sd["pos_embed"].shape[1] ** 0.5)) if "pos_embed" in sd else 16
    return model_spec("MMDiT", depth=depth, patch_size=patch, in_channels=in_channels, input_size=grid * patch,
                      learn_sigma=out_channels == 2 * in_channels,
                      context_dim=sd["context_embedder.weight"].shape[1],
                      qkv_bias="joint_blocks.0.x_block.attn.qkv.bias" in sd,
                      register_length=sd["register"].shape[1] if "register" in sd else 0)


def describe_spec(spec) -> str:
    if spec is None:
        return "an unrecognised network"
    cfg = spec["config"]
    extras = ", ".join(f"{k}={cfg[k]}" for k in ("num_classes", "in_channels", "learn_sigma") if k in cfg)
    name = spec["name"] or f"an unnamed {spec['arch']} (hidden_size={cfg.get('hidden_size')}, depth={cfg.get('depth')})"
    return f"{name} ({extras})"


def fit_errors(own: dict, state_dict: dict) -> list:
    """What keeps `state_dict` from loading strictly into a model whose state has the shapes `own`."""
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict) if tuple(state_dict[k].shape) != tuple(own[k].shape)
    )

    def head(items):
        return ", ".join(items[:6]) + (f" ... (+{len(items) - 6} more)" if len(items) > 6 else "")

    return [f"  {what}: {head(items)}" for what, items in
            (("shape mismatches", shapes), ("missing keys", missing), ("unexpected keys", unexpected)) if items]


def mismatch_error(label: str, errors: list, state_dict: dict, source) -> CheckpointError:
    lines = [f"{source} does not fit {label}:", *errors,
             f"  the checkpoint looks like {describe_spec(infer_spec(state_dict))}"]
    return CheckpointError("\n".join(lines))


def model_label(model) -> str:
    spec = getattr(model, "spec", None)  # every dico model carries one; other modules are named by their class
    return (spec or {}).get("name") or type(model).__name__


def load_weights(model: torch.nn.Module, state_dict: dict, source: str = "checkpoint") -> torch.nn.Module:
    """load_state_dict(strict=True) with an error that names what differs and what the checkpoint looks like."""
    state_dict = strip_wrappers(state_dict)
    errors = fit_errors(model.state_dict(), state_dict)
    if errors:
        raise mismatch_error(model_label(model), errors, state_dict, source)
    model.load_state_dict(state_dict, strict=True)
    return model


def build_checked(spec: dict, state_dict: dict, source) -> torch.nn.Module:
    """Build `spec` only once its shapes are known to equal the weights', so a file's claims can never make us
    allocate more than its own tensors need: the spec is first built on the meta device (no memory), after a
    bound on its depth that keeps even that construction small."""
    config = spec.get("config") if isinstance(spec, dict) else None
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: its model spec has no config")
    depth = config.get("depth", 0)
    blocks = sum(depth) if isinstance(depth, (list, tuple)) else depth
    if not isinstance(blocks, int) or blocks < 0 or blocks > len(state_dict):  # every block has parameters
        raise CheckpointError(f"{source}: its spec claims depth {depth}, but the file holds only "
                              f"{len(state_dict)} tensors: not a consistent checkpoint")
    try:
        with torch.device("meta"):
            shapes = build_model(spec).state_dict()
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: its model spec is invalid: {err}") from err
    errors = fit_errors(shapes, strip_wrappers(state_dict))
    if errors:
        raise mismatch_error(spec.get("name") or spec.get("arch", "its stored model spec"), errors, state_dict, source)
    return build_model(spec)


@dataclass
class Pretrained:
    """A loaded model and what it outputs: `space` (pixels or latents and their decoder) and `objective` (how it was
    trained, hence how to sample it); `checkpoint` is the raw dict read, for callers that need more of it."""

    model: torch.nn.Module
    space: OutputSpace | None  # None: the file does not say (bare weights of a non-latent model)
    objective: Objective
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


def stored_objective(ckpt: dict) -> Objective:
    """How the weights were trained. Checkpoints written before objectives were recorded are DDPM, with the process
    their training config names (the official one when it names none)."""
    if isinstance(ckpt.get("objective"), dict):
        record = ckpt["objective"]
    else:
        config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        record = {k: config[k] for k in ("noise_schedule", "diffusion_steps") if k in config}
    try:
        return objective_from_dict(record)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"unreadable objective record {record!r}: {err}") from err


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
        try:  # a model decodes only with the autoencoder (and statistics) it was trained on
            space.vae = check_vae_matches(space.vae, vae, space.latent_mean, space.latent_scale)
        except ValueError as err:
            raise CheckpointError(f"{source}: {err}") from err
    model = build_checked(spec, state, source)  # shapes already compared with the file's: load as they are
    model.load_state_dict(strip_wrappers(state), strict=True)
    model.eval()
    return Pretrained(model, space, stored_objective(ckpt), ckpt, str(source))


def load_model(source, name: str | None = None, weights: str = "ema", **overrides) -> torch.nn.Module:
    """The model a checkpoint holds, with its weights, in eval mode (see `load_pretrained`)."""
    return load_pretrained(source, name, weights, **overrides).model


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: a crash never leaves a half file.
    The file gets the permissions the umask gives new files (mkstemp alone would make it private to us)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as err:  # torch's zip writer reports a failed write (full disk, quota) this way
                raise OSError(f"could not write {path} (disk full, or over a file size limit or quota?): "
                              f"{str(err).strip().splitlines()[0]}") from err
            f.flush()
            os.fsync(f.fileno())
        stop_if_signalled()  # a swallowed Ctrl-C must not make the file final
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temp_files(directory, pattern: str = ".*.tmp") -> list:
    """Delete the temporary parts that saves killed mid-write left in `directory` (atomic_save's `.NAME.*.tmp`; or
    those `pattern` names, e.g. dico.cache.atomic_write's `.*.partial`); call it only where no save is under way.
    Returns what was removed."""
    directory = Path(directory)
    stale = sorted(directory.glob(pattern)) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def convert(source, out, weights: str = "ema", overwrite: bool = False) -> Path:
    """Write the chosen weights of any readable checkpoint as .safetensors, with the model spec as metadata. An
    existing `out` is refused unless `overwrite`, and then replaced in one rename."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"output must end in .safetensors, got {out}")
    check_new_output(out, overwrite)
    ckpt = read_checkpoint(source)
    state = select_weights(ckpt, weights, source)
    space = stored_space(ckpt)
    spec = stored_spec(ckpt) or infer_spec(state)
    extra = {}
    if isinstance(ckpt.get("text_encoder"), dict):  # text models: what `dico sample --prompt` embeds prompts with
        extra["dico_text_encoder"] = json.dumps(ckpt["text_encoder"])
    if torch.is_tensor(ckpt.get("null_context")):
        state = {**state, NULL_CONTEXT_TENSOR: ckpt["null_context"].detach().cpu()}
    return save_safetensors(state, out, spec=spec, space=None if space is None else asdict(space),
                            objective=stored_objective(ckpt).to_dict(), extra=extra)


def save_safetensors(state: dict, out, spec: dict | None, space: dict | None, objective: dict,
                     extra: dict | None = None) -> Path:
    """Write `state` as .safetensors with what `dico sample` needs besides the weights as metadata (the model spec,
    its output space, its objective; `extra`: more string entries) and a CRC-32 per tensor; in one rename."""
    from safetensors.torch import save_file

    metadata = {"format": "pt", "dico_objective": json.dumps(objective)}
    if spec:
        metadata["dico_spec"] = json.dumps(spec)
    if space is not None:
        metadata["dico_space"] = json.dumps(space)
    metadata.update(extra or {})
    state = {k: v.contiguous() for k, v in state.items()}
    metadata["dico_crc32"] = json.dumps({k: tensor_crc32(v) for k, v in state.items()})
    return atomic_write(out, lambda partial: save_file(state, str(partial), metadata=metadata))
