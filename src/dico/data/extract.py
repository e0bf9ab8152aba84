"""`dico extract-latents`: the VAE posterior of every image and of its mirror image, once, before training.

Encoding costs one VAE forward per image per step if done while training, more than a DiCo-S step itself; the
official release therefore extracts once. Unlike it, we store the posterior (mean, std) rather than one sampled
latent, so training still sees a fresh latent at every visit.

With a REPA encoder (`repa_encoder`), the encoder's patch tokens of the same two images are stored too
(repa_features.npy, float16), so training never runs the encoder. At the end, the per-channel statistics of the
latents are measured from the stored moments and written to meta.json.

With a text encoder (`text_encoder`) and a captioned folder (COCO 2014 as distributed, or a Hugging Face image
folder's metadata.jsonl: see dico.data.captions), every caption's token embeddings are stored too (float16), with
the empty caption's once and the encoder's record in meta.json; training then draws one caption per visit.

Work split: the images not yet done are cut into batches in index order and batch k goes to process k % world.
Each process writes its rows of the shared memory-mapped arrays and marks them in done.npy after each batch, so an
interrupted run (any number of processes) resumes where it stopped, with the same batches and so the same bytes.
"""

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..distributed import barrier, setup
from ..threads import ThreadPolicy
from .captions import CaptionedImageDataset, read_captioned_images
from .folders import ImageFolderDataset, folder_fingerprint, name_some, unreadable_images
from .latents import (CAPTION_OFFSETS, DONE, LATENT_FORMAT, META, PLAN, REPA_DONE, REPA_PLAN, STORAGE_DTYPES,
                      channel_statistics, create_latent_files, create_repa_files, create_text_files, open_done,
                      open_moments, open_repa_features, open_text_context, read_meta, write_json_atomic)
from .vae import LATENT_SCALE, encode_moments, is_sd_vae, load_vae, resolve_vae

# Settings an interrupted extraction must share with the run that resumes it.
REPA_KEYS = ("repa_encoder", "repa_shape")
PLAN_KEYS = ("format", "count", "image_size", "latent_shape", "vae", "dtype", "fingerprint", "text_encoder", "crop",
             *REPA_KEYS)
# What a plan written before a key existed meant by it.
PLAN_DEFAULTS = {"crop": "adm"}
TEXT_LAYOUT = ("text_context[caption, token, feature], float16; image i's captions are rows "
               "caption_offsets[i]:caption_offsets[i + 1] (texts in captions.jsonl); null_context = the empty caption")
REPA_LAYOUT = "repa_features[image, flip (0 as is, 1 mirrored), token (row-major grid), feature]"


def latent_shape_of(vae, image_size: int) -> list:
    """(C, h, w) of the VAE's latents for image_size images, from one forward (no assumption on the VAE's depth)."""
    probe = torch.zeros(1, 3, image_size, image_size, device=vae.device, dtype=vae.dtype)
    mean, _ = encode_moments(vae, probe)
    return list(mean.shape[1:])


def _check_plan(out: Path, plan: dict) -> str:
    """'done' if `out` holds this finished extraction, 'resume' if an unfinished one, 'new' if nothing, 'tokens' if
    a finished one without encoder tokens that this run adds; an error if it holds a different one. Every process
    runs this check, so all of them fail alike."""
    wanted = {k: plan[k] for k in PLAN_KEYS}
    for name, state in ((META, "done"), (PLAN, "resume")):
        if (out / name).is_file():
            saved = read_meta(out) if name == META else json.loads((out / PLAN).read_text())
            saved = {k: saved.get(k, PLAN_DEFAULTS.get(k)) for k in PLAN_KEYS}
            if state == "done" and saved["repa_encoder"] is None and wanted["repa_encoder"] is not None and all(
                    saved[k] == wanted[k] for k in PLAN_KEYS if k not in REPA_KEYS):
                return "tokens"
            if saved != wanted:
                changed = {k: (saved[k], wanted[k]) for k in PLAN_KEYS if saved[k] != wanted[k]}
                raise ValueError(f"{out} holds {'an' if state == 'done' else 'an unfinished'} extraction with other "
                                 f"settings (stored vs now: {changed}); choose another --out or remove it")
            return state
    return "new"


def _write_rows(array, rows: np.ndarray, block: torch.Tensor) -> None:
    # cast where the values are (the GPU): half the bytes to copy when storing float16
    block = block.to(getattr(torch, array.dtype.name)).contiguous().cpu().numpy()
    if rows[-1] - rows[0] == len(rows) - 1:  # the usual case: a slice writes straight through the page cache
        array[rows[0]:rows[-1] + 1] = block
    else:
        array[rows] = block
    array.flush()  # the rows reach the file before they are marked done


def _write_batch(moments, done, rows: np.ndarray, mean: torch.Tensor, std: torch.Tensor, features=None,
                 tokens: torch.Tensor | None = None, text=None) -> None:
    n = len(rows)
    # (2n, C, h, w) x2 with the mirrored images second -> (n, flip, (mean, std), C, h, w)
    _write_rows(moments, rows, torch.stack([mean, std], dim=1).unflatten(0, (2, n)).transpose(0, 1))
    if features is not None:  # (2n, T, D) -> (n, flip, T, D)
        _write_rows(features, rows, tokens.unflatten(0, (2, n)).transpose(0, 1))
    if text is not None:
        _write_captions(*text, rows)
    done[rows] = True
    done.flush()


def _write_captions(context, offsets: np.ndarray, captions: list, encoder, rows: np.ndarray) -> None:
    """The token embeddings of every caption of the images `rows`, into their rows of `context`."""
    texts = [text for row in rows for text in captions[row]]
    where = np.concatenate([np.arange(offsets[row], offsets[row + 1]) for row in rows])
    _write_rows(context, where, encoder.encode(texts))


def extract_latents(data, out, image_size: int = 256, vae="ema", batch_size: int = 64, num_workers: int = 4,
                    dtype: str = "float16", device=None, max_batches: int | None = None,
                    progress: bool = True, repa_encoder=None, threads=None, text_encoder=None,
                    captions=None, crop: str | None = None) -> Path:
    """Encode every image of the folder `data` (and its mirror image) into posterior moments under `out`.

    `vae`: any diffusers AutoencoderKL or AutoencoderDC (alias, Hub id or directory). `repa_encoder`: a frozen
    encoder of patch tokens (`dico.repa.load_encoder(name, image_size)`; anything with `.name`, `.token_shape(size)`
    and a call from images in [-1, 1] to (N, T, D) tokens) whose tokens are stored beside the moments.

    Run under torchrun to split the work over processes. Rerunning the same command resumes an interrupted run;
    on a finished one it does nothing. `max_batches` stops each process after that many batches (an interruption
    on purpose). `threads`: torch's CPU threads meanwhile (dico.threads.ThreadPolicy: None leaves them alone, N or
    "auto"). Returns `out`; meta.json in it marks a finished extraction.

    `text_encoder` (a dico.text.TextEncoder or a name for `load_text_encoder`): `data` is a captioned folder (COCO
    split or metadata.jsonl; `captions` names the annotation file if it is elsewhere) and every caption's token
    embeddings are stored beside the moments. A bad row (missing image, empty caption list, unreadable JSON) stops
    the run before anything is written. `crop`: how images are brought to `image_size` (dico.data.folders.CROPS):
    None is "adm" (ADM's crop, the official release's) for image folders and "uvit" (U-ViT's COCO crop, behind REPA's
    COCO latents) for captioned data.
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"--dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    owns_group = not dist.is_initialized()
    env = setup(device)
    out = Path(out)
    if text_encoder is None:
        if captions is not None:
            raise ValueError("--captions needs --text-encoder (the captions are stored as its token embeddings)")
        if crop not in (None, "adm"):
            raise ValueError(f"--crop {crop}: image folders are cropped as ADM (adm); the U-ViT crop is for "
                             "captioned data")
        dataset, captioned, crop = ImageFolderDataset(data, image_size, flip=False), None, "adm"
    else:
        crop = "uvit" if crop is None else crop
        captioned = read_captioned_images(data, captions)
        dataset = CaptionedImageDataset(captioned, image_size, crop)
    _check_readable(dataset, env)
    if isinstance(text_encoder, (str, os.PathLike)):
        from ..text import load_text_encoder

        text_encoder = load_text_encoder(text_encoder, device=env.device)
    elif text_encoder is not None:
        text_encoder.to(env.device)
    vae_id = resolve_vae(vae)
    model = load_vae(vae_id, env.device)
    if repa_encoder is not None:
        repa_encoder = repa_encoder.to(env.device)
    root = dataset.root.resolve()
    plan = {
        "format": LATENT_FORMAT,
        "count": len(dataset),
        "image_size": dataset.image_size,
        "crop": crop,
        "latent_shape": latent_shape_of(model, dataset.image_size),
        "vae": vae_id,
        "autoencoder": type(model).__name__,
        "sd_vae": is_sd_vae(model),
        # the official 0.18215 for the SD-VAE, else the autoencoder's own (used by --latent-norm scale)
        "scale": LATENT_SCALE if is_sd_vae(model) else float(getattr(model.config, "scaling_factor", 1.0) or 1.0),
        "dtype": dtype,
        "fingerprint": (folder_fingerprint(dataset.root, dataset.paths, dataset.labels) if captioned is None
                        else captioned.fingerprint()),
        "class_names": dataset.class_names,
        "num_classes": dataset.num_classes,
        "source": str(root),
        "layout": "moments[image, flip (0 as is, 1 mirrored), (mean, std), channel, y, x], unscaled",
        "repa_encoder": None if repa_encoder is None else repa_encoder.name,
        "repa_shape": None if repa_encoder is None else list(repa_encoder.token_shape(dataset.image_size)),
    }
    if repa_encoder is not None:
        plan["repa_layout"] = REPA_LAYOUT
    plan["text_encoder"] = None if text_encoder is None else text_encoder.to_dict()
    if text_encoder is not None:
        plan.update(captions_source=captioned.source, caption_layout=captioned.layout,
                    num_captions=sum(len(c) for c in captioned.captions),
                    context_shape=[text_encoder.length, text_encoder.dim], text_layout=TEXT_LAYOUT)
    state = _check_plan(out, plan)
    if state == "done":
        if env.main:
            print(f"{out} already holds these latents ({plan['count']} images){_skipped_note(dataset)}; nothing to do")
        return _finish(out, owns_group)
    if state == "tokens":
        _add_tokens(dataset, out, plan, repa_encoder, env, batch_size, num_workers, max_batches, progress, threads)
        return _finish(out, owns_group)
    if state == "new" and env.main:
        files = [os.path.relpath(p, dataset.root) for p in dataset.paths]
        create_latent_files(out, dataset.labels, plan["latent_shape"], dtype, files, plan["repa_shape"])
        if text_encoder is not None:
            create_text_files(out, captioned.captions, text_encoder.null().cpu().numpy())
        write_json_atomic(out / PLAN, plan)  # last: an extraction without it never started computing
    barrier()
    done = open_done(out)
    todo = np.flatnonzero(~done)
    barrier()  # everyone has read the same to-do list before anyone marks rows done
    moments = open_moments(out, "r+")
    features = open_repa_features(out, "r+") if repa_encoder is not None else None
    text = None
    if text_encoder is not None:
        text = (open_text_context(out, "r+"), np.load(out / CAPTION_OFFSETS), captioned.captions,
                text_encoder)
    for rows, both in _my_batches(dataset, todo, env, batch_size, num_workers, max_batches, progress, threads):
        mean, std = encode_moments(model, both)
        tokens = repa_encoder(both) if repa_encoder is not None else None
        _write_batch(moments, done, rows, mean, std, features, tokens, text)
    del moments, features, text
    barrier()
    if env.main:
        if open_done(out, "r").all():
            plan["latent_mean"], plan["latent_std"] = channel_statistics(out)
            write_json_atomic(out / META, plan)  # last: marks the extraction finished
            for name in (DONE, PLAN):
                (out / name).unlink(missing_ok=True)
            print(f"wrote latents of {plan['count']} images to {out}{_skipped_note(dataset)}")
        else:
            left = int((~open_done(out, "r")).sum())
            print(f"stopped with {left} of {plan['count']} images left; run the same command again to resume")
    return _finish(out, owns_group)


def _check_readable(dataset, env) -> None:
    """Every image's header, the work split over the processes: all the unreadable files in one error (the first
    NAMED named), before anything is loaded or written, rather than one bad file per run."""
    bad = unreadable_images(dataset.paths[env.rank::env.world], dataset.root)
    if env.world > 1:
        parts = [None] * env.world
        dist.all_gather_object(parts, bad)
        bad = sorted(item for part in parts for item in part)
    if bad:
        raise ValueError(f"{len(bad)} of {len(dataset)} images in {dataset.root} cannot be read; fix or remove "
                         f"them and run again: {name_some(f'{path} ({reason})' for path, reason in bad)}")


def _skipped_note(dataset) -> str:
    """'; skipped N entries: path (reason), ...' for what the folder scan left out (link loops, broken links, second
    links, non-image files), or ''."""
    skipped = dataset.skipped
    if not skipped:
        return ""
    noun = "entry" if len(skipped) == 1 else "entries"
    return f"; skipped {len(skipped)} {noun}: {name_some(f'{path} ({reason})' for path, reason in skipped)}"


def _my_batches(dataset, todo: np.ndarray, env, batch_size: int, num_workers: int, max_batches, progress: bool,
                threads=None):
    """This process's (rows, images and their mirror images on the device) of the rows `todo`, in batches, with
    torch's CPU threads as `threads` says (dico.threads.ThreadPolicy) while the caller works on each."""
    batches = [todo[k:k + batch_size] for k in range(0, len(todo), batch_size)]
    mine = batches[env.rank::env.world][:max_batches]
    loader = DataLoader(dataset, batch_sampler=[b.tolist() for b in mine], num_workers=num_workers,
                        pin_memory=env.device.type == "cuda")
    bar = tqdm(total=sum(len(b) for b in mine), disable=not (progress and env.main), unit="img",
               desc=f"extracting ({env.world} process{'es' if env.world > 1 else ''})", dynamic_ncols=True)
    with ThreadPolicy(threads, env.device) as cpu_threads:
        for rows, (x, _) in zip(mine, loader):
            cpu_threads()
            x = x.to(env.device, non_blocking=True)
            yield rows, torch.cat([x, torch.flip(x, dims=[-1])])
            bar.update(len(rows))
    bar.close()


def _add_tokens(dataset, out: Path, plan: dict, encoder, env, batch_size, num_workers, max_batches, progress,
                threads=None):
    """Encoder tokens for a finished extraction that has none (the VAE does not run again); resumable alike."""
    repa_plan = {k: plan[k] for k in REPA_KEYS}
    if (out / REPA_PLAN).is_file():
        saved = json.loads((out / REPA_PLAN).read_text())
        if saved != repa_plan:
            raise ValueError(f"{out} holds unfinished tokens of {saved['repa_encoder']}, not of "
                             f"{repa_plan['repa_encoder']}; finish that run or remove {REPA_PLAN} and {REPA_DONE}")
    elif env.main:
        create_repa_files(out, plan["count"], plan["repa_shape"])
        write_json_atomic(out / REPA_PLAN, repa_plan)
    barrier()
    done = open_done(out, name=REPA_DONE)
    todo = np.flatnonzero(~done)
    barrier()
    features = open_repa_features(out, "r+")
    for rows, both in _my_batches(dataset, todo, env, batch_size, num_workers, max_batches, progress, threads):
        _write_rows(features, rows, encoder(both).unflatten(0, (2, len(rows))).transpose(0, 1))
        done[rows] = True
        done.flush()
    del features
    barrier()
    if env.main:
        if open_done(out, "r", REPA_DONE).all():
            write_json_atomic(out / META, {**read_meta(out), **repa_plan, "repa_layout": REPA_LAYOUT})
            for name in (REPA_DONE, REPA_PLAN):
                (out / name).unlink(missing_ok=True)
            print(f"added the tokens of {repa_plan['repa_encoder']} for {plan['count']} images to {out}")
        else:
            left = int((~open_done(out, "r", REPA_DONE)).sum())
            print(f"stopped with the tokens of {left} of {plan['count']} images left; run the same command again")


def _finish(out: Path, owns_group: bool) -> Path:
    barrier()
    if owns_group and dist.is_initialized():
        dist.destroy_process_group()
    return out
