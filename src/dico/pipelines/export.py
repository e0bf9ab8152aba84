"""Pipeline folders from dico checkpoints (with a model card), loading either kind, and uploads to the Hub."""

import json
from importlib import resources
from pathlib import Path
from string import Template

from ..checkpoints import load_pretrained
from ..data import load_vae
from ..diffusion import named_beta_schedule
from .models import as_component
from .pipeline import DiCoPipeline, check_flow_objective, objective_kind
from .scheduler import DiCoScheduler

LICENSE = "MIT"  # dico's code; an official checkpoint keeps the license of its release (see the card)


def imagenet_labels() -> dict:
    """ImageNet-1k class id -> name (torchvision's names: one distinct, readable name per class)."""
    from torchvision.models import ResNet50_Weights

    return {str(i): name for i, name in enumerate(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])}


def default_labels(num_classes: int, class_names=None) -> dict:
    if class_names:
        return {str(i): str(name) for i, name in enumerate(class_names)}
    if num_classes == 1000:
        return imagenet_labels()
    return {str(i): str(i) for i in range(num_classes)}


def scheduler_for(objective: dict | None):
    """The default scheduler for a training objective: DiCoScheduler (the official iDDPM protocol) for dico's
    {"kind": "ddpm", "noise_schedule", "diffusion_steps"}; diffusers' FlowMatchEulerDiscreteScheduler (no shift) for a
    flow objective (`FlowObjective(...).to_dict()`; path Linear with velocity prediction only)."""
    objective = objective or {}
    if objective_kind(objective) == "flow":
        from diffusers import FlowMatchEulerDiscreteScheduler

        check_flow_objective(objective)
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    steps = int(objective.get("diffusion_steps", 1000))
    schedule = objective.get("noise_schedule", "linear")
    betas = named_beta_schedule(schedule, steps)
    return DiCoScheduler(num_train_timesteps=steps, beta_schedule=schedule, beta_start=float(betas[0]),
                         beta_end=float(betas[-1]))


def pipeline_from_network(network, space, vae=None, class_names=None, objective: dict | None = None) -> DiCoPipeline:
    """A DiCoPipeline around a dico network and its output space (`dico.sampling.OutputSpace`); `vae` is the
    loaded decoder of a latent space (loaded from `space.vae` when None)."""
    if space.vae is not None and vae is None:
        vae = load_vae(space.vae)
    return DiCoPipeline(transformer=as_component(network).eval(), scheduler=scheduler_for(objective), vae=vae,
                        id2label=default_labels(network.num_classes, class_names), sample_size=space.resolution,
                        latent_scale=space.latent_scale, objective=objective)


def load_pipeline(source, name: str | None = None, vae=None, image_size: int = 256,
                  num_classes: int | None = None) -> DiCoPipeline:
    """A DiCoPipeline from a pipeline folder, or from any checkpoint `dico sample` reads (ours, official with `name`,
    .safetensors, Hub files "owner/repo/file"). `vae`: "ema" | "mse" | a Hub id | a local VAE folder."""
    return pipeline_and_checkpoint(source, name, vae, image_size, num_classes)[0]


def pipeline_and_checkpoint(source, name=None, vae=None, image_size: int = 256, num_classes=None) -> tuple:
    """(pipeline, the checkpoint dict it came from; {} for a pipeline folder), reading the source once."""
    path = Path(str(source)).expanduser()
    if path.is_dir() and (path / "model_index.json").is_file():
        return DiCoPipeline.from_pretrained(str(path)), {}
    loaded = load_pretrained(source, name, "ema", image_size, vae, num_classes)
    space = loaded.output_space()
    vae_model = load_vae(space.vae) if space.vae is not None else None
    pipe = pipeline_from_network(loaded.model, space, vae_model, class_names_of(loaded.checkpoint), loaded.objective)
    return pipe, loaded.checkpoint


def class_names_of(checkpoint: dict):
    """The class names a checkpoint records (our training checkpoints: the data set's), else None."""
    names = checkpoint.get("class_names")
    return list(names) if isinstance(names, (list, tuple)) else None


def save_pipeline(checkpoint_source, out_dir, vae=None, name: str | None = None, image_size: int = 256,
                  num_classes: int | None = None) -> Path:
    """Write a diffusers pipeline folder (safetensors weights, model_index.json, README.md model card) from a
    checkpoint or another pipeline folder; returns the folder. Loads offline with
    `DiCoPipeline.from_pretrained(out_dir)` or `diffusers.DiffusionPipeline.from_pretrained(out_dir,
    trust_remote_code=True)`."""
    out_dir = Path(out_dir)
    pipe, checkpoint = pipeline_and_checkpoint(checkpoint_source, name, vae, image_size, num_classes)
    pipe.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(model_card(pipe, checkpoint, str(checkpoint_source), name))
    return out_dir


def objective_card_text(objective: dict | None) -> dict:
    """What the model card says that depends on the objective record (`pipe.config.objective`; None or {} for the
    official DDPM objective): "objective_line", "sampling" (the default sampling, followed on the card by the
    scheduler's config), "same_as" (the `dico sample` command the pipeline's default call equals),
    "other_schedulers", and "process_keys" (the training-config keys of the objective shown in the recipe)."""
    objective = objective or {}
    if objective_kind(objective) == "flow":
        return {
            "objective_line": (f"- Objective: flow matching as SiT (path {objective.get('path')}, prediction "
                               f"{objective.get('prediction')}; t = 0 noise, t = 1 data, the model predicts "
                               f"v = data - noise; time sampling {objective.get('time_sampling', 'uniform')})"),
            "sampling": ("Euler steps of diffusers' flow-matching scheduler (x_sigma = (1 - sigma) x0 + sigma noise; "
                         "the pipeline calls the model at t = 1 - sigma and passes -v), 250 steps, classifier-free "
                         "guidance 1.5 on the first 3 channels (fewer if the model has fewer); "),
            "same_as": "sigmas=flow_sigmas(250): = dico sample --method euler --steps 251 --seed 0",
            "other_schedulers": (
                "Other schedulers: diffusers' flow-matching ones, e.g. "
                "`pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(pipe.scheduler.config)`; "
                "`from dico.pipelines import flow_sigmas` and `pipe(..., sigmas=flow_sigmas(N))` for dico's uniform "
                "Euler grid (the scheduler's own grid ends with a step from sigma 1/1000 to 0)."),
            "process_keys": ("objective", "path", "prediction", "time_sampling", "logit_mean", "logit_std"),
        }
    return {
        "objective_line": "- Objective: DDPM (noise prediction, iDDPM learned-range variance)",
        "sampling": ("iDDPM ancestral sampling with the learned-range variance, 250 steps, classifier-free guidance\n"
                     "  1.5 on the first 3 noise channels (fewer if the model has fewer): the official protocol;\n  "),
        "same_as": "= dico sample --seed 0",
        "other_schedulers": ("Other schedulers: `pipe.scheduler = DPMSolverMultistepScheduler.from_config("
                             "pipe.scheduler.config)` (25 steps is\nplenty), or `DDIMScheduler.from_config(...)`."),
        "process_keys": ("diffusion_steps", "noise_schedule"),
    }


def model_card(pipe: DiCoPipeline, checkpoint: dict, source: str = "", name: str | None = None) -> str:
    """A Hub model card: what the model is, how it was trained (from the checkpoint, when it says), how to load it.
    The text is the template `model_card.md` (string.Template) beside this module."""
    model = pipe.transformer
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    spec = checkpoint.get("spec") if isinstance(checkpoint.get("spec"), dict) else {}
    parameters = sum(p.numel() for p in model.parameters())
    space = (f"latents {pipe.config.sample_size}x{pipe.config.sample_size}x{model.config.in_channels} of the VAE "
             f"`{pipe.vae.config.get('_name_or_path', 'vae')}` (scale {pipe.config.latent_scale})"
             if pipe.vae is not None else
             f"pixels, {pipe.config.sample_size}x{pipe.config.sample_size}x{model.config.in_channels}")
    train = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else None
    official_args = checkpoint.get("args")
    text = objective_card_text(pipe.config.get("objective"))
    if train:
        keep = ("model", "data", "max_steps", "global_batch", "lr", "betas", "weight_decay", "warmup_steps",
                "ema_decay", "precision", *text["process_keys"], "seed")
        shown = {**train, "data": train.get("data") or "the bundled digits"}
        recipe = "\n".join(f"| {k} | {shown[k]} |" for k in keep if k in train)
        step = checkpoint.get("step")
        recipe = (f"Trained with `dico train`{f' for {step} steps' if step is not None else ''}; EMA weights.\n\n"
                  f"| setting | value |\n|---|---|\n{recipe}")
    elif official_args is not None:
        recipe = ("An official DiCo release checkpoint (shallowdream204/DiCo): AdamW, lr 1e-4, batch 256, EMA 0.9999, "
                  "1000-step linear DDPM schedule with learned-range variance, ImageNet latents (SD-VAE).")
    else:
        recipe = "The checkpoint does not record its training recipe."
    scheduler_line = (f"`{type(pipe.scheduler).__name__}` config\n  "
                      f"`{json.dumps({k: v for k, v in pipe.scheduler.config.items() if not k.startswith('_')})}`")
    labels = pipe.config.id2label
    example = ", ".join(repr(labels[k].split(",")[0]) for k in list(labels)[:2]) or "0"
    license_line = (f"{LICENSE} (dico's code). Weights converted from an official release keep that release's "
                    "license." if official_args is not None else f"{LICENSE}")
    template = resources.files(__package__).joinpath("model_card.md").read_text(encoding="utf-8")
    return Template(template).substitute(
        model_name=spec.get("name") or name or type(model).__name__, source=source or "a dico model",
        architecture=type(model).__name__, parameters=f"{parameters / 1e6:.2f}", config=json.dumps(config),
        space=space, classes=len(labels), objective_line=text["objective_line"],
        sampling=text["sampling"] + scheduler_line, recipe=recipe, example=example, same_as=text["same_as"],
        other_schedulers=text["other_schedulers"], license=license_line)


def push_to_hub(out_dir, repo_id: str, private: bool = False, token: str | None = None,
                endpoint: str | None = None) -> str:
    """Upload a pipeline folder to the Hugging Face Hub (creating the repo); returns the repo URL.
    `endpoint`: another Hub server (default: huggingface.co, or HF_ENDPOINT)."""
    from huggingface_hub import HfApi

    out_dir = Path(out_dir)
    if not (out_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"{out_dir} is not a pipeline folder (no model_index.json); write it with save_pipeline")
    api = HfApi(token=token, endpoint=endpoint)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(out_dir), repo_id=repo_id, commit_message="Upload DiCo pipeline (dico)")
    except Exception as err:  # offline, no token, no rights: say what and how to fix
        raise RuntimeError(
            f"could not upload {out_dir} to the Hugging Face Hub repo {repo_id!r}: {type(err).__name__}: {err}. "
            "Uploading needs network access and a write token (`hf auth login` or HF_TOKEN); the folder is "
            "complete and can be uploaded later with `hf upload`") from err
    return str(url)
