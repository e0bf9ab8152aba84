"""What `dico sample` (and `dico.sampling.sample`) takes: the checkpoint, the output and the sampling options."""

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from tyro.conf import UseAppendAction

from ..options import (check_class_ids, check_guidance_channels, check_guidance_scale, check_int, check_new_output,
                       check_number, check_seed, check_steps, comma_separated)
from ..threads import Threads, check_threads


SAMPLE_FORMATS = {".png": ".png (a grid)", ".npz": ".npz (ADM format)"}  # what `dico sample` writes


def check_out_suffix(out, suffixes=tuple(SAMPLE_FORMATS)) -> None:
    """Refuse an output path `out` whose suffix is not one of `suffixes`. The message names each choice with what
    it holds, or just the suffix when there is only one."""
    if Path(out).suffix not in suffixes:
        wanted = " or ".join(SAMPLE_FORMATS[s] for s in suffixes) if len(suffixes) > 1 else suffixes[0]
        raise ValueError(f"--out must end in {wanted}, got {out}")


@dataclass
class SamplingOptions:
    """How to sample. `method` and `steps` default to what the model's objective calls for: DDPM models ancestral
    sampling over 250 steps (the official protocol), flow models dopri5 over 50 time points (ODE) or Euler over 250
    steps (SDE), as SiT's sample.py."""

    method: str | None = None
    """DDPM: ddpm | ddim | dpm++2m | dpm++3m; flow ODE: a torchdiffeq method; flow SDE: Euler | Heun (None: ddpm for
    DDPM models, dopri5 / Euler for flow models)."""
    steps: int | None = None
    """Model calls (DDPM, MeanFlow) or time points (flow) (None: 250 for DDPM, 50 / 250 for flow, 1 for MeanFlow)."""
    cfg_scale: float = 1.0  # classifier-free guidance scale (1: no guidance)
    guidance_channels: int | Literal["all"] = 3  # guide the first N output channels (official: 3) or 'all'
    guidance_interval: Annotated[tuple[float, float], comma_separated(float, "LO,HI", count=2)] = (0.0, 1.0)
    """Guide only while the time t (0 = noise, 1 = data) lies in [LO, HI]."""
    eta: float = 0.0  # DDIM eta
    seed: int = 0  # every image's noise and label are keyed by (seed, image index)
    batch_size: int = 32  # images per model call (results do not depend on it)
    sampler: Literal["ode", "sde"] = "ode"  # flow models: probability-flow ODE or SDE
    atol: float = 1e-6  # flow ODE, adaptive methods: absolute tolerance
    rtol: float = 1e-3  # flow ODE, adaptive methods: relative tolerance
    shift: float = 1.0  # flow: timestep shift of the integration grid (LightningDiT/SD3); 1 = none
    diffusion_form: Literal["constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing"] = "sigma"
    """Flow SDE: SiT's diffusion coefficient form."""
    diffusion_norm: float = 1.0  # flow SDE: scale of the diffusion coefficient
    last_step: Literal["Mean", "Tweedie", "Euler"] | None = "Mean"  # flow SDE: SiT's last step
    last_step_size: float = 0.04  # flow SDE: size of the last step
    cache_interval: int = 1  # DeepCache: full forward every N steps (1 = off)
    cache_depth: Literal[1, 2] = 1  # DeepCache: outer levels recomputed
    cache_guidance: bool = True  # DeepCache with guidance: cached steps reuse cond - uncond (off: run both halves)

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Every value checked before any work, each error naming the option and what it accepts. The checks of the
        values DiCoPipeline also takes (dico.options.check_steps, check_guidance_scale, check_seed,
        check_guidance_channels) are those it runs, so a bad value gets the same message from either. Sampling
        runs them again, for options changed after they were made."""
        self.guidance_interval = tuple(self.guidance_interval)
        if self.steps is not None:
            self.steps = check_steps(self.steps)
        self.cfg_scale = check_guidance_scale(self.cfg_scale)
        self.seed = check_seed(self.seed)
        self.guidance_channels = check_guidance_channels(self.guidance_channels)
        check_int("batch_size", self.batch_size, 1)
        check_int("cache_interval", self.cache_interval, 1)
        check_int("cache_depth", self.cache_depth, 1, 2)
        check_number("eta", self.eta, 0)
        for name in ("atol", "rtol", "shift", "diffusion_norm", "last_step_size"):
            check_number(name, getattr(self, name), 0, low_open=True)
        interval = self.guidance_interval
        if len(interval) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in interval) or \
                not 0 <= interval[0] <= interval[1] <= 1:
            raise ValueError(f"--guidance-interval must be two numbers 0 <= LO <= HI <= 1, got {interval}")
        if self.sampler not in ("ode", "sde"):
            raise ValueError(f"--sampler must be 'ode' or 'sde', got {self.sampler!r}")


@dataclass(kw_only=True)
class SampleConfig(SamplingOptions):
    """Sample images from a checkpoint: ours, an official one (its size inferred from the weights) or a Hub file.

    The sampling options are SamplingOptions' (method and steps default to what the checkpoint's objective calls
    for); these add where the model comes from and where the images go.
    """

    ckpt: str  # checkpoint: ours, official (model inferred from the weights) or owner/repo/file
    model: str | None = None  # model name (None: recorded in ours, inferred from official weights)
    weights: Literal["ema", "model"] = "ema"
    image_size: int = 256  # official latent models: 256 or 512 px
    num_classes: int | None = None  # official models: number of classes (1000)
    vae: str | None = None  # ema | mse | a local VAE directory (latent models)
    classes: Annotated[tuple[int, ...] | None, comma_separated(int, "C1,C2,...")] = None
    """Class ids, cycled (None: random classes)."""
    labels: Literal["random", "balanced"] = "random"
    """Without --classes: a keyed random class per image, or balanced (exactly N / classes images of each class)."""
    guide_ckpt: str | None = None
    """Autoguidance: a weaker checkpoint (same objective, space, classes) that --cfg-scale guides away from."""
    guide_model: str | None = None  # the guide's model name (None: recorded in ours, inferred from official weights)
    prompt: Annotated[tuple[str, ...], UseAppendAction] = ()
    """Text models: a prompt; repeat the flag for more, image i gets prompt i mod their number (default: none; tyro
    does not print the default of a repeatable flag)."""
    prompts_file: str | None = None  # text models: a file of prompts, one per line, cycled as --prompt
    captions: str | None = None
    """Text models, the evaluation protocol: one sample per image of this captioned folder (COCO 2014 val,
    metadata.jsonl) or extracted latents folder, with one of its captions (dico.data.evaluation_captions)."""
    text_encoder: str | None = None  # text models: a text encoder name or folder (None: the checkpoint's)
    num_samples: int | None = None  # images to write (None: 16; with --captions, one per captioned image)
    out: str  # samples.png (a grid) or samples.npz (ADM format)
    nrow: int | None = None  # images per grid row (None: a square grid)
    device: str | None = None  # cpu, cuda, cuda:1 ... (None: the local GPU if any)
    overwrite: bool = False  # replace an existing --out (a .npz of the same run is otherwise reported complete)
    threads: Threads = "auto"  # CPU threads: N, or auto (the cores other processes leave free; torch's default on GPU)

    def __post_init__(self):
        super().__post_init__()
        check_threads(self.threads)
        check_int("num_samples", self.num_samples, 1, none_ok=True)
        self.prompt = tuple(self.prompt)
        check_int("nrow", self.nrow, 1, none_ok=True)
        check_int("num_classes", self.num_classes, 1, none_ok=True)
        check_int("image_size", self.image_size, 8)
        if self.image_size % 8:
            raise ValueError(f"--image-size must be a multiple of 8 (the VAE's downsampling), got {self.image_size}")
        if self.classes is not None:
            self.classes = tuple(check_class_ids(self.classes))
        if self.guide_model is not None and self.guide_ckpt is None:
            raise ValueError("--guide-model names the model of --guide-ckpt; give --guide-ckpt too")
        if isinstance(self.out, str):  # (not while the flag parser builds its defaults, before --out is read)
            check_out_suffix(self.out)  # where --out may go is checked by dico.sampling.sample: one line


def check_sample_output(out, overwrite: bool) -> None:
    """`--out` can be written (checked by dico.sampling.sample before any work). An existing .npz is left to the
    sampler, which reports a finished file of the same run complete and refuses any other without `overwrite`."""
    check_new_output(out, overwrite or Path(out).suffix == ".npz", "out")
