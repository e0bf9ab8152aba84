"""`DiCoPipeline`: class-conditional images from a DiCo (or dico DiT) model through diffusers, and text-to-image images
from a text-conditioned one (`pipe(prompt=...)`, with `text_encoder` and `tokenizer` components).

With its default scheduler and a `seed`, a pipeline makes exactly the images of `dico sample` (same seeds, labels
and settings): image i's initial and per-step noise are keyed by (seed, i) as in `dico.sampling.generate`. With a
torch `generator` instead it follows diffusers' conventions (noise drawn from that generator).

Flow-matching models (objective {"kind": "flow", "path": "Linear", "prediction": "velocity"}, trained as SiT: t = 0
noise, t = 1 data, the model predicts v = data - noise) run on diffusers' flow-matching schedulers
(`FlowMatchEulerDiscreteScheduler` by default) as those define it: x_sigma = (1 - sigma) * x0 + sigma * noise,
timesteps = sigma * num_train_timesteps, model output = noise - x0. So the pipeline calls dico's model at
t = 1 - sigma and hands the scheduler -v (the first in_channels channels of a learned-sigma output).

Time grids: FlowMatchEulerDiscreteScheduler's N steps run over sigmas linspace(1, 1/num_train_timesteps, N) and then
0, while `dico sample --method euler --steps N+1` runs over the uniform t = linspace(0, 1, N+1), i.e. sigmas
linspace(1, 0, N+1). `pipe(..., sigmas=flow_sigmas(N))` gives dico's grid, hence dico's Euler samples for a seed (to
float rounding of 1 - (1 - t)). Shifts: dico's --shift s is the scheduler's shift 1 / s.
"""

import difflib
import inspect
import json
import re
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ..conditioning import ClassLabels, is_text_model
from ..data import LATENT_SCALE, decode_latents
from ..images import to_uint8
from ..objectives import objective_from_dict
from ..options import (check_class_ids, check_guidance_channels, check_guidance_scale, check_seed, check_steps,
                       honour_umask)
from ..randomness import PURPOSES, keyed_generator
from ..sampling.guided import ClassifierFree, Denoiser, GuideModel, Guidance, keyed_noise, keyed_step_noise

OUTPUT_TYPES = ("pil", "np", "latent")
# A pipeline folder names this file in model_index.json, so that diffusers' generic loader can find DiCoPipeline.
LOADER_MODULE = "dico_pipeline"
LOADER_SOURCE = '''"""Lets `diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` load this folder: the
pipeline is dico's own (pip install dico-diffusion).
`dico.pipelines.DiCoPipeline.from_pretrained(folder)` needs no remote code."""

from dico.pipelines import DiCoPipeline

__all__ = ["DiCoPipeline"]
'''


def check_weights_present(folder: Path) -> None:
    """A FileNotFoundError naming the file when a model component of the pipeline folder has no weights file."""
    index = json.loads((folder / "model_index.json").read_text()) if (folder / "model_index.json").is_file() else {}
    weights = {"transformer": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
    for name, stem in weights.items():
        part = folder / name
        if not isinstance(index.get(name), list) or None in index[name] or not (part / "config.json").is_file():
            continue  # not a component of this folder (a pixel model has no vae, a class model no text encoder)
        if not any(part.glob(f"{stem}*.safetensors")) and not any(part.glob("*.bin")):
            raise FileNotFoundError(f"{part / (stem + '.safetensors')}: no such file; the pipeline folder is "
                                    "incomplete (convert the checkpoint again)")


def flow_sigmas(num_inference_steps: int) -> list:
    """The sigmas (one per step, the scheduler appends the final 0) of dico's uniform Euler grid: with them,
    FlowMatchEulerDiscreteScheduler(shift=1) steps exactly where `dico sample --method euler
    --steps num_inference_steps+1` does (t = 1 - sigma = linspace(0, 1, N + 1))."""
    n = check_steps(num_inference_steps)
    return (1 - torch.linspace(0, 1, n + 1, dtype=torch.float32))[:-1].tolist()


class DiCoPipeline(DiffusionPipeline):
    """Class-conditional or text-to-image sampling of a dico model.

    Components: `transformer` (a `DiCo2DModel` or `DiT2DModel`), `scheduler` (default `DiCoScheduler`: iDDPM with the
    learned variance, as the official sampler; any diffusers scheduler can be swapped in) and `vae` (the decoder of a
    latent model; None for pixel-space models such as the digits demo).
    Config: `id2label` (class id -> name(s), comma-separated synonyms), `sample_size` (the model's input side, latent
    or pixel), `latent_scale` (latents are divided by it before decoding) and `objective` (what the checkpoint
    records: None or {"kind": "ddpm", ...} for DDPM models, `FlowObjective(...).to_dict()` for flow-matching ones,
    which sample with diffusers' flow-matching schedulers, `FlowMatchEulerDiscreteScheduler` by default).

    Text-conditioned models (`dico.conditioning.is_text_model`) hold the prompt encoder as diffusers' text-to-image
    pipelines do: `text_encoder` (a transformers text tower, e.g. CLIPTextModel) and `tokenizer`; the model reads the
    tower's last hidden state as `context` (its `encoder_hidden_states`). Config: `text_length` (tokens per prompt,
    padded to it), `text_attention_mask` (whether the tower is given the padding mask: not for CLIP, as REPA and
    U-ViT embedded COCO), `text_encoder_name` (what the tower was loaded as, for the card) and `text_null_dtype`
    ("float16" when training's null, the empty caption, was stored in float16 as extracted latents folders store
    it: the pipeline's empty caption is rounded the same way). The prompts are encoded by dico.text.TextEncoder, the
    code `dico sample --prompt` and training use.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer"]

    def __init__(self, transformer, scheduler, vae=None, id2label: dict | None = None, sample_size: int | None = None,
                 latent_scale: float | None = LATENT_SCALE, objective: dict | None = None, text_encoder=None,
                 tokenizer=None, text_length: int | None = None, text_attention_mask: bool = False,
                 text_encoder_name: str | None = None, text_null_dtype: str | None = None):
        super().__init__()
        if objective is not None:
            objective = objective_from_dict(objective)
            objective.check_pipeline()
            objective = objective.to_dict()
        text = is_text_model(transformer)
        if text and (text_encoder is None or tokenizer is None):
            raise ValueError(f"{type(transformer).__name__} is text-conditioned: the pipeline needs its text_encoder "
                             "and tokenizer")
        if not text and (text_encoder is not None or tokenizer is not None):
            raise ValueError(f"{type(transformer).__name__} is class-conditional: it takes no text_encoder or "
                             "tokenizer")
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer)
        if sample_size is None:
            sample_size = transformer.config.get("input_size")
        if sample_size is None:
            raise ValueError("sample_size (the model's input side in pixels or latents) is required for DiCo")
        id2label = {str(k): str(v) for k, v in (id2label or {}).items()}
        latent_scale = float(latent_scale) if vae is not None and latent_scale is not None else None  # pixels: none
        self.register_to_config(id2label=id2label, sample_size=int(sample_size), latent_scale=latent_scale,
                                objective=dict(objective) if objective else None)
        if text:  # (class pipelines' configs stay as they were)
            length = int(text_length or transformer.config.get("context_length"))
            if text_null_dtype not in (None, "float16"):
                raise ValueError(f"text_null_dtype must be None or 'float16', got {text_null_dtype!r}")
            self.register_to_config(text_length=length, text_attention_mask=bool(text_attention_mask),
                                    text_encoder_name=text_encoder_name, text_null_dtype=text_null_dtype)
        self.labels = {}
        for key, names in id2label.items():
            for name in names.split(","):
                self.labels.setdefault(name.strip(), int(key))

    # ------------------------------------------------------------------------------------------ saving / loading

    def save_pretrained(self, save_directory, **kwargs):
        """diffusers' folder, with model_index.json naming dico's pipeline so the generic loader can find it."""
        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        index_path = folder / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = [LOADER_MODULE, type(self).__name__]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        (folder / f"{LOADER_MODULE}.py").write_text(LOADER_SOURCE)
        honour_umask(*folder.glob("*/*.safetensors"))  # safetensors' writer makes the weights private

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' loader; a local folder that lost a weights file, or whose config no longer fits its weights,
        gets a one-line message naming the file instead of diffusers' text."""
        folder = Path(str(pretrained_model_name_or_path)).expanduser()
        if folder.is_dir():
            check_weights_present(folder)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except ValueError as err:
            mismatch = re.search(r"because (\S+) expected shape (.+?), but got (.+?)\. ", str(err))
            if mismatch is None or not folder.is_dir():
                raise
            key, expected, found = mismatch.groups()
            raise ValueError(f"{folder}: a component's config.json does not fit its weights ({key}: the config "
                             f"makes {expected}, the weights file holds {found}); convert the checkpoint "
                             "again") from None

    @classmethod
    def load_config(cls, *args, **kwargs):
        # The [module, class] form in model_index.json is for diffusers' generic loader; loading through this class
        # itself needs no code from the folder.
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if isinstance(config.get("_class_name"), list):
            config["_class_name"] = config["_class_name"][-1]
        return loaded

    # ----------------------------------------------------------------------------------------------- labels

    def get_label_ids(self, label: str | list) -> list:
        """Class ids of class names (any synonym in id2label), e.g. ["golden retriever", "tabby"] -> [207, 281]."""
        names = [label] if isinstance(label, str) else list(label)
        ids = []
        for name in names:
            if name not in self.labels:
                close = difflib.get_close_matches(str(name), self.labels, n=3)
                hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"{name!r} is not a class name of this model.{hint} See pipe.labels for all names.")
            ids.append(self.labels[name])
        return ids

    def label_tensor(self, class_labels) -> torch.Tensor:
        num_classes = self.transformer.config.num_classes
        if class_labels is None:
            raise ValueError("class_labels is required: one class id or name per image")
        if isinstance(class_labels, (int, str)) or torch.is_tensor(class_labels) and class_labels.ndim == 0:
            class_labels = [class_labels]
        if torch.is_tensor(class_labels):
            items = class_labels.cpu().reshape(-1)
        else:
            items = [self.get_label_ids(c)[0] if isinstance(c, str) else c for c in list(class_labels)]
        if len(items) == 0:
            raise ValueError("class_labels is empty: ask for at least one image")
        return torch.tensor(check_class_ids(items, num_classes), dtype=torch.long)  # 1.5 is refused, not made 1

    def with_scheduler(self, scheduler) -> "DiCoPipeline":
        """A pipeline sharing this one's networks, tokenizer and settings, sampling with `scheduler`."""
        settings = {k: v for k, v in self.config.items() if not k.startswith("_") and k not in self.components}
        return type(self)(**{**self.components, "scheduler": scheduler}, **settings)

    # ---------------------------------------------------------------------------------------------- prompts

    @property
    def is_text(self) -> bool:
        """Whether the model is conditioned on prompts (else on class labels)."""
        return is_text_model(self.transformer)

    def prompt_encoder(self):
        """The text_encoder and tokenizer as a dico.text.TextEncoder: the encoding training and `dico sample` use."""
        from ..text import TextEncoder

        if not self.is_text:
            raise ValueError("this pipeline's model is class-conditional: it has no prompt encoder")
        return TextEncoder(self.text_encoder, self.tokenizer, self.config.text_encoder_name or "text_encoder",
                           self.config.text_length, self.config.text_attention_mask, "transformers")

    def encode_prompt(self, prompt, negative_prompt: str | None = None):
        """The TextTokens of `prompt` (a string or a list of them, one per image) whose null, the condition guidance
        contrasts with, is `negative_prompt`'s embedding (default: the empty caption's, as caption dropout trains)."""
        from ..conditioning import TextTokens

        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt must be a string or a list of strings, got {prompt!r}")
        if not prompts:
            raise ValueError("prompt is empty: ask for at least one image")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError(f"negative_prompt must be one string (the null of every image), got {negative_prompt!r}")
        encoder = self.prompt_encoder()
        dtype = self.transformer.dtype
        context = encoder.encode(list(prompts)).to(dtype)
        null = encoder.encode([negative_prompt or ""])[0]
        if not negative_prompt and self.config.get("text_null_dtype"):  # the empty caption, as training stored it
            null = null.to(getattr(torch, self.config.text_null_dtype)).float()
        return TextTokens(context, null.to(dtype))

    def condition(self, class_labels, prompt, negative_prompt, device):
        """The Conditioning of a call: class labels, or prompts for a text model (whose first argument may be the
        prompt, as diffusers' text-to-image pipelines take it)."""
        if not self.is_text:
            if prompt is not None or negative_prompt is not None:
                raise ValueError("this model is class-conditional: pass class_labels (ids or names), not prompt")
            return ClassLabels(self.label_tensor(class_labels).to(device), self.transformer.config.num_classes)
        if class_labels is not None:
            if prompt is not None:
                raise ValueError("this model is text-conditioned: pass prompt, not class_labels")
            prompt = class_labels
        if prompt is None:
            raise ValueError("prompt is required: this model is text-conditioned (one prompt per image)")
        return self.encode_prompt(prompt, negative_prompt).to(device)

    # ---------------------------------------------------------------------------------------------- sampling

    @torch.no_grad()
    def __call__(self, class_labels=None, guidance_scale: float = 1.5, num_inference_steps: int = 250,
                 generator=None, seed: int | None = None, guidance_channels: int | str = 3,
                 output_type: str = "pil", return_dict: bool = True, callback_on_step_end=None, sigmas=None,
                 prompt=None, negative_prompt: str | None = None,
                 guide_transformer=None):
        """Images of `class_labels` (one per label: ids, or names from `id2label`), or for a text-conditioned model
        of `prompt` (one string per image; also taken as the first argument) with `negative_prompt` (default the
        empty caption) as the null guidance contrasts with.

        guidance_scale: classifier-free guidance (1 = off; the official FID protocol uses 1.5 with 250 steps).
        guidance_channels: guide the first N output channels (official: 3, clamped to the model's channels) or "all".
        seed: image i's noise is keyed by (seed, i), exactly as `dico sample --seed` (then leave `generator` None).
        generator: a torch.Generator (or one per image) drawing the noise the diffusers way.
        output_type: "pil" (RGB images, quantised as `dico sample` writes them), "np" (float (N, H, W, C) in
            [0, 1]) or "latent" (the model's raw samples: latents, or pixels in [-1, 1] for pixel models).
        callback_on_step_end(pipe, step, timestep, {"latents": x}): called after every step (e.g. progress).
        sigmas: custom sigmas for schedulers whose set_timesteps takes them (the flow-matching ones; one per step,
            num_inference_steps is then their number): `flow_sigmas(N)` gives dico's uniform Euler grid.
        guide_transformer: autoguidance (Karras et al. 2024): guidance_scale then guides away from this weaker
            model (smaller or less trained, same objective, space and classes, on the same device; any dtype)
            given the same labels, instead of from the null class; e.g. the transformer of
            `load_pipeline(guide)`, checked by `check_guide_pipeline(pipe, guide_pipe)`.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if seed is not None and generator is not None:
            raise ValueError("pass either seed (dico's keyed noise) or generator (diffusers' noise), not both")
        # The checks (and messages) of `dico sample`'s flags, before any work.
        guidance_scale = check_guidance_scale(guidance_scale)
        guidance_channels = check_guidance_channels(guidance_channels)
        if seed is not None:
            seed = check_seed(seed)
        if sigmas is None:
            num_inference_steps = check_steps(num_inference_steps)
        model = self.transformer
        device = self._execution_device
        cond = self.condition(class_labels, prompt, negative_prompt, device)
        n, channels, size = len(cond), model.config.in_channels, self.config.sample_size
        strategy = ClassifierFree() if guide_transformer is None else GuideModel(guide_transformer)
        # Refuses what cannot be guided: a model without a null class, a guide whose input does not fit.
        denoiser = Denoiser(model, cond, Guidance(guidance_scale, guidance_channels, strategy=strategy))
        objective = self.objective
        objective.check_scheduler(self.scheduler)
        if sigmas is not None:
            if "sigmas" not in inspect.signature(self.scheduler.set_timesteps).parameters:
                raise ValueError(f"{type(self.scheduler).__name__} takes no custom sigmas; use num_inference_steps")
            sigmas = np.asarray(sigmas, dtype=np.float64).ravel()
            if not len(sigmas) or not np.isfinite(sigmas).all() or (sigmas < 0).any():
                raise ValueError(f"sigmas must be one or more finite numbers >= 0, got {sigmas.tolist()}")
            self.scheduler.set_timesteps(sigmas=[float(s) for s in sigmas], device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)

        shape = (channels, size, size)
        if seed is not None:
            x = keyed_noise(seed, range(n), shape, device)
        else:
            x = randn_tensor((n, *shape), generator=generator, device=device, dtype=torch.float32)
        x = denoiser.layout(x * getattr(self.scheduler, "init_noise_sigma", 1.0))
        noise_for_step = self.step_noise(seed, generator, n, shape, denoiser.copies, device)

        for step, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            if hasattr(self.scheduler, "scale_model_input"):
                model_input = self.scheduler.scale_model_input(x, t).to(model.dtype)
            else:
                model_input = x.to(model.dtype)
            output = denoiser(model_input, objective.pipeline_timesteps(self.scheduler, t, len(x), device),
                              **objective.pipeline_model_inputs(self.scheduler, t, len(x), device))
            model_output = objective.scheduler_input(self.scheduler, output, channels)
            x = self.scheduler.step(model_output, t, x, **noise_for_step(step)).prev_sample
            if callback_on_step_end is not None:
                callback_on_step_end(self, step, t, {"latents": x})
        samples = x[:n]

        if output_type == "latent":
            images = samples
        else:
            if self.vae is not None:
                samples = decode_latents(self.vae, samples, self.config.latent_scale)
            if output_type == "pil":
                images = [Image.fromarray(image) for image in to_uint8(samples)]
            else:
                images = (samples.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    @property
    def objective(self):
        """The model's training objective (dico.objectives), which says how its schedulers are driven."""
        return objective_from_dict(self.config.get("objective"))

    def step_noise(self, seed, generator, n, shape, copies, device):
        """step -> keyword arguments of scheduler.step giving it this step's fresh noise (for `copies` of each of
        the n images: a guided state holds two)."""
        parameters = inspect.signature(self.scheduler.step).parameters
        if seed is None:
            if "generator" not in parameters:
                return lambda step: {}
            if isinstance(generator, list):
                generator = generator * copies  # one per image of both halves; the second half is discarded
            return lambda step: {"generator": generator}
        if "variance_noise" in parameters:  # dico's keyed per-step noise, exactly as `dico sample` draws it
            step_noise = keyed_step_noise(seed, range(n), shape, device, copies)
            return lambda step: {"variance_noise": step_noise(step)}
        if "generator" in parameters:  # one generator per image: still independent of the batch
            per_image = [keyed_generator(seed, PURPOSES["sample_step"], i) for _ in range(copies) for i in range(n)]
            return lambda step: {"generator": per_image}
        return lambda step: {}
