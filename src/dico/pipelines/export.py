"""Pipeline folders from dico checkpoints (with a model card), loading either kind, and uploads to the Hub."""

import json
from importlib import resources
from pathlib import Path
from string import Template

import torch

from ..cache import atomic_write
from ..checkpoints import load_pretrained
from ..conditioning import is_text_model
from ..data import load_vae
from ..objectives import objective_from_dict
from ..options import check_new_output
from ..sampling.guided import check_guide_model
from .models import as_component
from .pipeline import DiCoPipeline

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


def pipeline_from_network(network, space, vae=None, class_names=None, objective=None,
                          text_encoder=None, null_context=None) -> DiCoPipeline:
    """A DiCoPipeline around a dico network and its output space (`dico.sampling.OutputSpace`), sampling with the
    default scheduler of its objective (dico.objectives; a record, or None for the official DDPM); `vae` is the
    loaded decoder of a latent space (loaded from `space.vae` when None). A text-conditioned network needs its
    `text_encoder` (a dico.text.TextEncoder: its tower and tokenizer become the pipeline's components);
    `null_context`, the empty caption's tokens training recorded, says how that null was stored (see
    null_precision)."""
    objective = objective_from_dict(objective)
    if space.vae is not None and vae is None:
        vae = load_vae(space.vae)
    text = {}
    if is_text_model(network):
        if text_encoder is None:
            raise ValueError(f"{type(network).__name__} is text-conditioned: its pipeline needs the text encoder "
                             "it was trained with (a dico.text.TextEncoder)")
        text = dict(text_encoder=text_encoder.model, tokenizer=text_encoder.tokenizer,
                    text_length=text_encoder.length, text_attention_mask=text_encoder.attention_mask,
                    text_encoder_name=public_name(text_encoder.name),
                    text_null_dtype=null_precision(text_encoder, null_context))
    return DiCoPipeline(transformer=as_component(network).eval(), scheduler=objective.scheduler(), vae=vae,
                        id2label=default_labels(network.num_classes, class_names), sample_size=space.resolution,
                        latent_scale=space.latent_scale, objective=objective.to_dict(), **text)


def null_precision(text_encoder, null_context) -> str | None:
    """"float16" when training's recorded null (the empty caption's tokens) is this encoder's empty caption stored in
    float16 (extracted latents folders store tokens so), None when it is the float32 embedding (or not recorded). A
    recorded null that is not this encoder's empty caption at all is an error: the encoder is not the one trained
    with."""
    if null_context is None:
        return None
    recorded, fresh = torch.as_tensor(null_context).float().cpu(), text_encoder.null().float().cpu()
    if recorded.shape != fresh.shape or not torch.allclose(recorded, fresh, rtol=1e-2, atol=1e-2):
        raise ValueError(f"text encoder {public_name(text_encoder.name)!r} embeds the empty caption otherwise than "
                         "the checkpoint recorded during training: it is not the encoder the model was trained with")
    stored_in_half = torch.equal(recorded, recorded.half().float()) and not torch.equal(recorded, fresh)
    return "float16" if stored_in_half else None


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
    text_encoder = text_encoder_of(loaded.checkpoint, source) if is_text_model(loaded.model) else None
    pipe = pipeline_from_network(loaded.model, space, vae_model, class_names_of(loaded.checkpoint), loaded.objective,
                                 text_encoder, loaded.checkpoint.get("null_context") if text_encoder else None)
    return pipe, loaded.checkpoint


def check_guide_pipeline(pipe: DiCoPipeline, guide: DiCoPipeline) -> None:
    """Refuse, in one line naming what differs, a guide pipeline whose transformer cannot autoguide `pipe`'s: the
    same objective, sample size, latent or pixel space and latent scale, classes (names too, when both have them)
    and input channels (dico.sampling.autoguidance.check_guide does the same for checkpoints)."""
    def facts(p):
        return {"objective": objective_from_dict(p.config.get("objective")).to_dict(),
                "sample size": p.config.sample_size, "space": "latents" if p.vae is not None else "pixels",
                "latent scale": p.config.latent_scale}

    ours, theirs = facts(pipe), facts(guide)
    for what in ours:
        if ours[what] != theirs[what]:
            raise ValueError(f"the guide cannot guide this model: the {what} differs ({theirs[what]} vs {ours[what]})")
    try:
        check_guide_model(pipe.transformer, guide.transformer)
    except ValueError as err:
        raise ValueError(f"the guide cannot guide this model: {err}") from None
    # Names a checkpoint records are compared; the numbers a pipeline makes up for a file without any are not.
    plain = {str(i): str(i) for i in range(pipe.transformer.num_classes)}
    names, guide_names = dict(pipe.config.id2label or {}), dict(guide.config.id2label or {})
    if names not in ({}, plain) and guide_names not in ({}, plain) and names != guide_names:
        first = next(k for k in names if names[k] != guide_names.get(k))
        raise ValueError(f"the guide cannot guide this model: the class names differ (class {first}: "
                         f"{guide_names.get(first)!r} vs {names[first]!r})")


def load_guide_pipeline(pipe: DiCoPipeline, source, name: str | None = None, image_size: int = 256,
                        num_classes: int | None = None) -> DiCoPipeline:
    """The pipeline of a guide (a folder or any checkpoint `load_pipeline` reads), checked against `pipe`; pass its
    `transformer` as `pipe(..., guide_transformer=...)`."""
    guide = load_pipeline(source, name=name, image_size=image_size, num_classes=num_classes)
    check_guide_pipeline(pipe, guide)
    return guide


def text_encoder_of(checkpoint: dict, source=""):
    """The dico.text.TextEncoder a text model's checkpoint records (`text_encoder`: TextEncoder.to_dict()), loaded
    as recorded; an error naming the file when it records none."""
    from ..text import TextEncoder

    record = checkpoint.get("text_encoder")
    if not isinstance(record, dict) or not record.get("name"):
        raise ValueError(f"{public_name(source) or 'the checkpoint'} holds a text-conditioned model but does not "
                         "record its text encoder ('text_encoder'); train it with `dico train` on captioned data")
    return TextEncoder.from_dict(record)


def class_names_of(checkpoint: dict):
    """The class names a checkpoint records (our training checkpoints: the data set's), else None."""
    names = checkpoint.get("class_names")
    return list(names) if isinstance(names, (list, tuple)) else None


def save_pipeline(checkpoint_source, out_dir, vae=None, name: str | None = None, image_size: int = 256,
                  num_classes: int | None = None, overwrite: bool = False) -> Path:
    """Write a diffusers pipeline folder (safetensors weights, model_index.json, README.md model card) from a
    checkpoint or another pipeline folder; returns the folder. Loads offline with
    `DiCoPipeline.from_pretrained(out_dir)` or `diffusers.DiffusionPipeline.from_pretrained(out_dir,
    trust_remote_code=True)`.

    An existing pipeline folder is replaced only with `overwrite`, and whole: the new folder is written beside it
    and swapped in, so old and new files never mix. A non-empty folder that is not a dico pipeline is never
    written into."""
    out_dir = Path(out_dir)
    check_new_output(out_dir, overwrite, folder=True)
    pipe, checkpoint = pipeline_and_checkpoint(checkpoint_source, name, vae, image_size, num_classes)

    def write(partial):
        pipe.save_pretrained(partial)
        (partial / "README.md").write_text(model_card(pipe, checkpoint, public_name(checkpoint_source), name))

    return atomic_write(out_dir, write)


def public_name(source) -> str:
    """What a model card may say a model came from: a local file's name, never its path on this machine; a Hub id
    or an official model name as given."""
    path = Path(str(source)).expanduser()
    return path.name if path.exists() else str(source)


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
    text = pipe.objective.card_text()
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
    if pipe.is_text:
        kind_tag, conditioning = "text-to-image", "timestep through adaLN and on a prompt's token embeddings"
        condition_line = (f"prompts, encoded by `{type(pipe.text_encoder).__name__}` "
                          f"(`{pipe.config.text_encoder_name}`) into {pipe.config.text_length} tokens")
        call = 'images = pipe(prompt=["a photo of a cat", "a red bus"], seed=0).images'
    else:
        kind_tag, conditioning = "class-conditional", "timestep and class through adaLN"
        condition_line = f"{len(labels)} classes"
        call = f"images = pipe(class_labels=pipe.get_label_ids([{example}]), seed=0).images"
    license_line = (f"{LICENSE} (dico's code). Weights converted from an official release keep that release's "
                    "license." if official_args is not None else f"{LICENSE}")
    template = resources.files(__package__).joinpath("model_card.md").read_text(encoding="utf-8")
    return Template(template).substitute(
        model_name=spec.get("name") or name or type(model).__name__, source=source or "a dico model",
        architecture=type(model).__name__, parameters=f"{parameters / 1e6:.2f}", config=json.dumps(config),
        space=space, kind_tag=kind_tag, conditioning=conditioning, condition_line=condition_line, call=call,
        objective_line=text["objective_line"],
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
    except Exception as err:  # offline, no token, no rights: the user's to fix, so one line and exit 2 (an OSError)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(
            f"could not upload {out_dir} to the Hugging Face Hub repo {repo_id!r} ({type(err).__name__}: {reason}); "
            "uploading needs network access and a write token (`hf auth login` or HF_TOKEN); the folder is "
            "complete and can be uploaded later with `hf upload`") from err
    return str(url)
