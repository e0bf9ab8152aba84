"""Sampling to images, grids and ADM-format .npz files, with per-image seeds.

Image i's label, initial noise and per-step noise are keyed by (seed, i), so an image does not depend on the batch
size, the number of processes, or whether the run was interrupted and resumed.
"""

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..conditioning import Conditioning, class_labels
from ..data import OutputSpace, load_vae
from ..images import PROMPTS_KEY, save_grid, to_uint8, write_npz
from ..config import SamplingOptions
from ..config.sampling import check_out_suffix
from ..options import check_class_ids, check_new_output
from ..objectives import objective_from_dict
from ..randomness import PURPOSES, keyed_randint
from ..threads import ThreadPolicy
from .guided import sample_latents


LABELS = ("random", "balanced")  # how images get their class when --classes does not list them


def check_labels(labels: str, num_samples: int, num_classes: int, classes=None) -> None:
    """Refuse an unknown `labels`, and balanced labels that cannot give every class exactly num_samples / classes
    images (the classes listed in `classes`, else all the model's)."""
    if labels not in LABELS:
        raise ValueError(f"--labels must be one of {', '.join(LABELS)}, got {labels!r}")
    if labels != "balanced":
        return
    count = len(classes) if classes else num_classes
    if count == 0:
        raise ValueError("--labels balanced needs a class-conditional model (this one has no classes)")
    if num_samples % count:
        raise ValueError(f"--labels balanced: --num-samples {num_samples} is not divisible by the {count} classes; "
                         f"use a multiple of {count}, e.g. {num_samples - num_samples % count or count}")


def image_labels(indices, num_classes: int, seed: int, classes=None, labels: str = "random") -> torch.Tensor:
    """Label of each image index: `classes` cycled if given, else a keyed random class (0 if unconditional), or with
    `labels="balanced"` the classes in turn (image i gets class i mod the class count), so any N divisible by the
    class count holds exactly N / classes images of each, and every batch and process sees them mixed."""
    if labels not in LABELS:
        raise ValueError(f"--labels must be one of {', '.join(LABELS)}, got {labels!r}")
    if labels == "balanced" and not classes:
        classes = list(range(num_classes))
    if classes:
        return torch.tensor([classes[i % len(classes)] for i in indices])
    if num_classes == 0:
        return torch.zeros(len(indices), dtype=torch.long)
    return keyed_randint([(seed, PURPOSES["label"], i) for i in indices], num_classes)


@torch.no_grad()
def generate(model, space: OutputSpace, indices, cond, options: SamplingOptions, device=None, vae=None,
             progress: bool = False, objective=None, guide=None) -> np.ndarray:
    """Sample the images with the given indices and conditions; uint8 (N, H, W, 3). `cond`: a Conditioning (class
    labels as a tensor are the model's ClassLabels); `objective`: the checkpoint's (dico.objectives; a record or
    None, the official DDPM, also do) picks the sampler; `guide`: a guide model for autoguidance (None: the scale is
    classifier-free guidance)."""
    device = torch.device(device or next(model.parameters()).device)
    if not isinstance(cond, Conditioning):
        cond = class_labels(cond, model)
    shape = (space.channels, space.resolution, space.resolution)
    z = sample_latents(model, objective_from_dict(objective), cond.to(device), options, indices, shape, device,
                       progress, guide=guide)
    if space.vae is not None:
        if vae is None:
            raise ValueError(f"latent samples need their VAE ({space.vae}) to decode")
        z = space.decode(vae, z)
    bad = [i for i, ok in zip(indices, torch.isfinite(z).flatten(1).all(dim=1).tolist()) if not ok]
    if bad:  # quantising NaN would write black images that look like results
        raise FloatingPointError(f"the model produced non-finite values (NaN/inf) for {len(bad)} of {len(indices)} "
                                 f"images (first indices {bad[:5]}); are the weights damaged or diverged?")
    return to_uint8(z)


def load_vae_for(space: OutputSpace, device):
    if space.vae is None:
        return None
    return load_vae(space.vae, device)


def write_class_grid(model, facts, path, classes: int = 10, per_class: int = 8, steps: int = 50,
                     cfg_scale: float = 1.0, seed: int = 0, device=None, method: str | None = None,
                     objective=None) -> Path:
    """A PNG grid with one row per class (the first `classes` classes), `per_class` samples each."""
    space = facts.space
    rows = min(classes, facts.num_classes) if facts.num_classes else 1  # unconditional: one row of label 0
    indices = list(range(rows * per_class))
    labels = torch.tensor([i // per_class for i in indices])
    options = SamplingOptions(method=method, steps=steps, cfg_scale=cfg_scale if facts.num_classes else 1.0, seed=seed)
    was_training = model.training
    model.eval()
    images = generate(model, space, indices, labels, options, device, vae=load_vae_for(space, device),
                      objective=objective)
    model.train(was_training)
    return save_grid(images, path, nrow=per_class, scale=max(1, 32 // space.resolution))


SETTINGS_KEY = "dico_settings"  # beside ADM's arr_0 / arr_1, which evaluators read by name


def weights_digest(model) -> str:
    """SHA-256 of the model's weights (names, dtypes, shapes, bytes): what a resumed sampling run must share."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def finished_settings(path) -> dict | None:
    """The settings a finished .npz of ours was sampled with (None for other files)."""
    try:
        with np.load(path) as f:
            return json.loads(str(f[SETTINGS_KEY])) if SETTINGS_KEY in f.files else None
    except (OSError, ValueError):
        return None


def sample_to_npz(model, space: OutputSpace, out, num_samples: int, options: SamplingOptions, classes=None,
                  rank: int = 0, world: int = 1, device=None, progress: bool = True, barrier=lambda: None,
                  run_info: dict | None = None, objective=None, overwrite: bool = False, threads=None,
                  prompts=None, guide=None, labels: str = "random") -> Path | None:
    """Sample `num_samples` images into an ADM-format .npz, resumably and split over `world` processes.

    Work is cut into shards of `batch_size` image indices; shard k goes to process k % world and is saved as soon as
    it is done, under `<out>.parts/`. A rerun with the same settings skips finished shards; different settings are
    refused rather than mixed. Process 0 merges the shards at the end. Returns the .npz path on process 0.
    An existing `out` sampled with the same settings is reported complete; any other is refused unless `overwrite`,
    and then replaced at the end in one rename.
    `threads`: torch's CPU threads while sampling (dico.threads.ThreadPolicy: None leaves them alone, N or "auto").
    `prompts` (text models): a dico.sampling.prompts.PromptConditions giving image i its prompt; the file then holds
    a unicode `prompts` array aligned with arr_0 instead of class labels (arr_1).
    `guide`: a guide model (autoguidance; its weights are part of the settings); `labels`: "random" or "balanced"
    (see image_labels) when `classes` is not given.
    """
    out = Path(out)
    check_out_suffix(out, (".npz",))
    check_new_output(out, True, "out")
    options.check()
    if classes is not None:
        classes = check_class_ids(classes, model.num_classes)
    check_labels(labels, num_samples, model.num_classes, classes)
    parts = out.with_name(out.name + ".parts")
    # Shards are named by batch, so the batch size is part of the settings a resumed run must share; the weights
    # are bound by content, not by the path they came from.
    settings = json.loads(json.dumps({"num_samples": num_samples, "options": asdict(options), "classes": classes,
                                      "space": asdict(space),
                                      "objective": objective_from_dict(objective).to_dict(),
                                      "weights": weights_digest(model),
                                      **({"guide_weights": weights_digest(guide)} if guide is not None else {}),
                                      **({"labels": labels} if labels != "random" else {}),
                                      **({} if prompts is None else prompts.record(num_samples)),
                                      **(run_info or {})}))
    if out.exists() and not overwrite:
        finished = finished_settings(out)
        if finished == settings:
            if rank == 0 and progress:
                print(f"{out} is already complete with these settings")
            return out if rank == 0 else None
        raise ValueError(f"{out} already exists" + (" and was written with other settings" if finished else "") +
                         "; pass --overwrite to replace it")
    manifest = parts / "settings.json"
    parts.mkdir(parents=True, exist_ok=True)
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved != settings:
            raise ValueError(f"{parts} holds an unfinished run with other settings; remove it or use its "
                             f"settings to resume:\n{json.dumps(saved, indent=1)}")
        if rank == 0:  # shards a kill interrupted; no process writes one before the barrier below
            for stale in parts.glob(".[0-9]*.tmp.npz"):
                stale.unlink(missing_ok=True)
    else:  # every process writes the same text; the rename makes it atomic
        tmp = parts / f".settings.{rank}.tmp"
        tmp.write_text(json.dumps(settings, indent=1))
        tmp.replace(manifest)
    barrier()
    bs = options.batch_size
    shards = [k for k in range((num_samples + bs - 1) // bs) if k % world == rank]
    todo = [k for k in shards if not (parts / f"{k:06d}.npz").exists()]
    vae = load_vae_for(space, device) if todo else None
    model.eval()
    with ThreadPolicy(threads, device or next(model.parameters()).device) as cpu_threads:
        for k in tqdm(todo, disable=not progress, desc=f"sampling (rank {rank})", unit="batch"):
            cpu_threads()
            indices = list(range(k * bs, min((k + 1) * bs, num_samples)))
            cond = prompts(indices) if prompts is not None else image_labels(indices, model.num_classes,
                                                                              options.seed, classes, labels)
            images = generate(model, space, indices, cond, options, device, vae=vae, objective=objective,
                              guide=guide)
            tmp = parts / f".{k:06d}.tmp.npz"
            np.savez(tmp, images=images)
            tmp.replace(parts / f"{k:06d}.npz")
    barrier()
    if rank != 0:
        return None
    files = [parts / f"{k:06d}.npz" for k in range((num_samples + bs - 1) // bs)]
    all_labels = image_labels(range(num_samples), model.num_classes, options.seed, classes, labels).numpy()  # keyed
    extra = {SETTINGS_KEY: np.array(json.dumps(settings))}
    if prompts is not None:  # image i's prompt, as unicode (np.str_), for CLIP score and per-prompt evaluation
        all_labels, extra[PROMPTS_KEY] = None, np.array(prompts.prompts_of(range(num_samples)), dtype=np.str_)
    image_shape = np.load(files[0])["images"].shape[1:]
    write_npz(out, (np.load(f)["images"] for f in files), num_samples, image_shape, all_labels, extra=extra)
    shutil.rmtree(parts)
    return out
