"""`dico.sampling.sample(SampleConfig(...))`: what `dico sample` does, as a function."""

import math
from dataclasses import fields
from pathlib import Path

from ..checkpoints import load_pretrained
from ..conditioning import is_text_model
from ..distributed import barrier, setup, teardown
from ..images import save_grid
from ..config import SampleConfig
from ..config.sampling import check_out_suffix, check_sample_output
from ..options import check_class_ids
from ..threads import ThreadPolicy
from .autoguidance import load_guide
from .generate import SamplingOptions, check_labels, generate, image_labels, load_vae_for, sample_to_npz
from .prompts import PromptConditions, check_prompt_sources, gather_prompts, text_encoder_for

DEFAULT_NUM_SAMPLES = 16


def sampling_options(config: SampleConfig) -> SamplingOptions:
    """The config's fields of SamplingOptions (the rest, the DDPM process, comes from the checkpoint's objective)."""
    given = {f.name for f in fields(config)}
    return SamplingOptions(**{f.name: getattr(config, f.name) for f in fields(SamplingOptions) if f.name in given})


def prompt_conditions(config: SampleConfig, loaded, device) -> tuple:
    """(PromptConditions or None for a class model, the number of images to sample). A text model's prompts are
    embedded by the checkpoint's text encoder (or `config.text_encoder`), with the empty caption the checkpoint
    recorded as the null; --captions samples one image per captioned image unless --num-samples says otherwise."""
    if not is_text_model(loaded.model):
        return None, config.num_samples or DEFAULT_NUM_SAMPLES
    prompts = gather_prompts(config.prompt, config.prompts_file, config.captions, config.num_samples, config.seed)
    num_samples = config.num_samples or (len(prompts) if config.captions is not None else DEFAULT_NUM_SAMPLES)
    encoder = text_encoder_for(loaded.checkpoint.get("text_encoder"), config.text_encoder, device)
    recorded = loaded.checkpoint.get("null_context") if config.text_encoder is None else None
    return PromptConditions(encoder, prompts, recorded, loaded.model), num_samples


def sample(config: SampleConfig) -> Path | None:
    """Sample `config.num_samples` images of the checkpoint `config.ckpt` into `config.out`: a PNG grid, or an
    ADM-format .npz (split over processes under torchrun). Returns the written path on process 0, else None.
    Text models sample `config.prompt` / `prompts_file` / `captions` (see prompt_conditions); their grids are
    labelled with the prompts and their .npz files carry a `prompts` array beside arr_0 (and no class labels).
    `config.threads` is torch's CPU threads meanwhile, as for `dico sample` (dico.threads.ThreadPolicy)."""
    out = Path(config.out)
    check_out_suffix(out)
    check_sample_output(out, config.overwrite)
    options = sampling_options(config)  # checked before any work
    env = setup(config.device)
    cpu_threads = ThreadPolicy(config.threads, env.device)  # auto: measures the machine while the model loads
    loaded = load_pretrained(config.ckpt, config.model, config.weights, config.image_size, config.vae,
                             config.num_classes)
    model, space = loaded.model.to(env.device), loaded.output_space()
    check_prompt_sources(model, config.classes, config.prompt, config.prompts_file, config.captions)
    classes = check_class_ids(config.classes, model.num_classes) if config.classes is not None else None
    prompts, num_samples = prompt_conditions(config, loaded, env.device)
    check_labels(config.labels, num_samples, model.num_classes, classes)
    guide, run_info = None, {"ckpt": str(config.ckpt)}
    if config.guide_ckpt is not None:
        guide = load_guide(config.guide_ckpt, loaded, config.guide_model, config.weights, config.image_size,
                           config.vae, config.num_classes).model.to(env.device)
        run_info["guide_ckpt"] = str(config.guide_ckpt)
    path = None
    if out.suffix == ".npz":
        path = sample_to_npz(model, space, out, num_samples, options, classes, env.rank, env.world,
                             env.device, progress=env.main, barrier=barrier, run_info=run_info,
                             objective=loaded.objective, overwrite=config.overwrite, threads=config.threads,
                             prompts=prompts, guide=guide, labels=config.labels)
    elif env.main:
        indices = list(range(num_samples))
        cond = prompts(indices) if prompts else image_labels(indices, model.num_classes, config.seed, classes,
                                                             config.labels)
        with cpu_threads:
            images = generate(model, space, indices, cond, options, env.device, vae=load_vae_for(space, env.device),
                              progress=True, objective=loaded.objective, guide=guide)
        # Small images (8x8 digits) are shown enlarged by pixel repetition, as the trainer's grid does.
        path = save_grid(images, out, nrow=config.nrow or math.ceil(math.sqrt(len(images))),
                         scale=max(1, 32 // space.resolution), labels=prompts.prompts_of(indices) if prompts else None)
    teardown()
    return path
