"""Training objectives as one family: what a model learns, how it is sampled, and how diffusers samples it.

    objective = objective_from_options(config)        # the run's choice (dico train --objective ...)
    record = objective.to_dict()                      # what checkpoints and pipeline configs store
    objective = objective_from_dict(record)           # old records (no "kind", or none at all) load as DDPM
    losses = objective.loss_function(learn_sigma)     # per-sample losses(model, x, model_kwargs, keys)
    z = objective.sample(denoiser, noise, options, learn_sigma=..., step_noise=...)

An objective's settings are the fields of its settings dataclass, declared once here: the flags of `dico train` are
generated from them (TrainConfig inherits `ObjectiveOptions`), checkpoints record them, and nothing outside this
module asks which objective it is. A new objective is one settings dataclass and one class here, added to
`ObjectiveOptions`.

This module imports no torch itself (the command line reads the settings for `--help`); the numerics live in
dico.diffusion (iDDPM) and dico.transport (SiT's flow matching), imported where they run.
"""

import dataclasses
from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

from .options import check_choices, check_int, check_number


# ------------------------------------------------------------------------------------------------------ settings
@dataclass
class DDPMSettings:
    diffusion_steps: int = 1000  # ddpm: diffusion timesteps
    noise_schedule: Literal["linear", "squaredcos_cap_v2"] = "linear"  # ddpm: beta schedule

    def check(self) -> None:
        check_int("diffusion_steps", self.diffusion_steps, 2)
        check_choices(self, DDPMSettings)


@dataclass
class FlowSettings:
    path: Literal["Linear", "GVP", "VP"] = "Linear"  # flow: the interpolation path
    prediction: Literal["velocity", "noise", "score"] = "velocity"  # flow: what the model predicts
    loss_weight: Literal["velocity", "likelihood"] | None = None  # flow, noise/score prediction: loss weighting
    train_eps: float | None = None  # flow: None = SiT's default for the path and prediction
    sample_eps: float | None = None  # flow: None = SiT's default for the path and prediction
    time_sampling: Literal["uniform", "logit-normal"] = "uniform"  # flow: training times (SD3 / LightningDiT)
    logit_mean: float = 0.0  # flow, logit-normal times: mean
    logit_std: float = 1.0  # flow, logit-normal times: standard deviation

    def check(self) -> None:
        check_choices(self, FlowSettings)
        check_number("logit_mean", self.logit_mean)
        check_number("logit_std", self.logit_std, 0, low_open=True)
        check_number("train_eps", self.train_eps, 0, 1, none_ok=True)
        check_number("sample_eps", self.sample_eps, 0, 1, none_ok=True)


@dataclass
class MeanFlowSettings:
    meanflow_logit_mean: float = -0.4  # meanflow: times' logit-normal mean, the paper's (logit of the noise level)
    meanflow_logit_std: float = 1.0  # meanflow: times' logit-normal standard deviation
    meanflow_interval_fraction: float = 0.25  # meanflow: fraction of samples with r != t (the rest: flow matching)
    meanflow_weight_power: float = 1.0  # meanflow: p of the adaptive loss weight 1 / (|delta|^2 + c)^p (0: none)
    meanflow_weight_eps: float = 1e-3  # meanflow: c of the adaptive loss weight
    meanflow_cfg_omega: float = 1.0  # meanflow: guidance folded into the target, omega (1, kappa 0: unguided)
    meanflow_cfg_kappa: float = 0.0  # meanflow: guidance folded into the target, kappa (scale omega / (1 - kappa))

    def check(self) -> None:
        check_number("meanflow_logit_mean", self.meanflow_logit_mean)
        check_number("meanflow_logit_std", self.meanflow_logit_std, 0, low_open=True)
        check_number("meanflow_interval_fraction", self.meanflow_interval_fraction, 0, 1)
        check_number("meanflow_weight_power", self.meanflow_weight_power, 0)
        check_number("meanflow_weight_eps", self.meanflow_weight_eps, 0, low_open=True)
        check_number("meanflow_cfg_omega", self.meanflow_cfg_omega)
        check_number("meanflow_cfg_kappa", self.meanflow_cfg_kappa, 0, 1)
        if self.meanflow_cfg_kappa == 1:  # (the effective scale omega / (1 - kappa) would be infinite)
            raise ValueError("--meanflow-cfg-kappa must be below 1, got 1")


@dataclass
class ObjectiveKind:
    objective: Literal["ddpm", "flow", "meanflow"] = "ddpm"
    """The official iDDPM ("ddpm"), flow matching as SiT ("flow") or MeanFlow's average velocity ("meanflow":
    sampling in one or a few steps), each with the options below."""


# Bases in this order so that the flags, config files and checkpoint records list them as they always have (a
# dataclass lists the fields of its last base first): the DDPM settings, the choice, the flow settings, then the
# settings of later objectives.
@dataclass
class ObjectiveOptions(MeanFlowSettings, FlowSettings, ObjectiveKind, DDPMSettings):
    """The settings of every objective, as flags: `objective` picks the one a run trains, the others are unused."""

    def check(self) -> None:
        check_choices(self, ObjectiveKind)
        DDPMSettings.check(self)
        FlowSettings.check(self)  # (combinations are checked by the chosen objective, when the run builds it)
        MeanFlowSettings.check(self)


# ----------------------------------------------------------------------------------------------------- the family
class Objective:
    """The interface every objective implements. Subclasses are dataclasses of their settings with a `kind`."""

    kind: ClassVar[str]
    settings: ClassVar[type]

    def __post_init__(self):
        self.check()  # refuse invalid settings when the objective is made, not when a checkpoint is read back

    @classmethod
    def from_options(cls, options) -> "Objective":
        """The objective with its settings read from `options` (any object with those attributes: TrainConfig)."""
        return cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(cls.settings)})

    def to_dict(self) -> dict:
        """The record checkpoints and pipeline configs store: {"kind": ..., settings...}."""
        return {"kind": self.kind, **asdict(self)}

    def model_config(self) -> dict:
        """What the objective needs of the network's config (applied before the run's own overrides)."""
        return {}

    @classmethod
    def from_dict(cls, record: dict) -> "Objective":
        data = dict(record)
        kind = data.pop("kind", cls.kind)
        if kind != cls.kind:
            raise ValueError(f"not a {cls.kind} objective: kind {kind!r}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls.settings)}
        if unknown:
            raise ValueError(f"unknown {cls.kind} objective fields: {', '.join(sorted(unknown))}")
        return cls(**data)

    # training
    def loss_function(self, learn_sigma: bool):
        """losses(model, x, model_kwargs, keys) -> per-sample loss (B,), every draw keyed by (seed, step, position)."""
        raise NotImplementedError

    # sampling
    def sample(self, denoiser, noise, options, *, learn_sigma: bool, step_noise=None, device=None,
               progress: bool = False):
        """The final samples from `noise` with `denoiser(x, t)` (the guided model), by `options`' method and steps."""
        raise NotImplementedError

    def flow_time(self, t: float) -> float:
        """The model's time argument as flow time in [0, 1], 0 = noise and 1 = data (guidance intervals use it)."""
        raise NotImplementedError

    # diffusers
    def scheduler(self):
        """The diffusers scheduler a pipeline of this objective samples with by default."""
        raise NotImplementedError

    def pipeline_samplers(self) -> dict:
        """Sampler name -> scheduler built from the default scheduler's config (the web demo's choices)."""
        raise NotImplementedError

    def check_pipeline(self) -> None:
        """Refuse an objective diffusers' schedulers cannot sample."""

    def check_scheduler(self, scheduler) -> None:
        """Refuse a scheduler of another family than this objective's (it would make noise without an error)."""
        raise NotImplementedError

    def pipeline_timesteps(self, scheduler, t, batch: int, device):
        """The model's time argument for the scheduler's step `t`."""
        raise NotImplementedError

    def pipeline_model_inputs(self, scheduler, t, batch: int, device) -> dict:
        """Model inputs besides x, t and the condition for the scheduler's step `t` (MeanFlow's r)."""
        return {}

    def scheduler_input(self, scheduler, output, channels: int):
        """What the scheduler's step takes from the model's output."""
        raise NotImplementedError

    def card_text(self) -> dict:
        """What a pipeline's model card says of this objective: "objective_line", "sampling" (the default sampling,
        followed on the card by the scheduler's config), "same_as" (the `dico sample` command the pipeline's default
        call equals), "other_schedulers" and "process_keys" (the training-config keys shown in the recipe)."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------------------- DDPM
@dataclass
class DDPMObjective(DDPMSettings, Objective):
    """iDDPM as the official release trains it: noise prediction with the learned-range variance (when the model has
    it), `diffusion_steps` steps of `noise_schedule`."""

    kind: ClassVar[str] = "ddpm"
    settings: ClassVar[type] = DDPMSettings

    def to_dict(self) -> dict:
        record = super().to_dict()  # records have listed the schedule first since the first checkpoints
        return {"kind": record.pop("kind"), "noise_schedule": record.pop("noise_schedule"), **record}

    def process(self, learn_sigma: bool):
        from .diffusion import create_diffusion

        return create_diffusion("", noise_schedule=self.noise_schedule, learn_sigma=learn_sigma,
                                diffusion_steps=self.diffusion_steps)

    def loss_function(self, learn_sigma: bool):
        from .randomness import PURPOSES, keyed_randint, keyed_randn

        diffusion = self.process(learn_sigma)

        def losses(model, x, model_kwargs, keys):
            t = keyed_randint([(k[0], PURPOSES["timestep"], *k[1:]) for k in keys], diffusion.num_timesteps, x.device)
            noise = keyed_randn([(k[0], PURPOSES["noise"], *k[1:]) for k in keys], x.shape[1:], x.device, x.dtype)
            return diffusion.training_losses(model, x, t, model_kwargs=model_kwargs, noise=noise)["loss"]

        return losses

    def sample(self, denoiser, noise, options, *, learn_sigma: bool, step_noise=None, device=None,
               progress: bool = False):
        from .diffusion import SAMPLING_METHODS, sample_loop

        diffusion = self.process(learn_sigma)
        method = options.method or "ddpm"
        if method not in SAMPLING_METHODS:
            raise ValueError(f"method must be one of {', '.join(SAMPLING_METHODS)} for a DDPM model, got {method!r}")
        return sample_loop(diffusion, denoiser, noise.shape, method=method, steps=options.steps or 250,
                           eta=options.eta, noise=noise, step_noise=step_noise, device=device, progress=progress)

    def flow_time(self, t: float) -> float:
        return 1.0 - t / self.diffusion_steps

    def scheduler(self):
        from .diffusion import named_beta_schedule
        from .diffusion.scheduler import DiCoScheduler

        betas = named_beta_schedule(self.noise_schedule, self.diffusion_steps)
        return DiCoScheduler(num_train_timesteps=self.diffusion_steps, beta_schedule=self.noise_schedule,
                             beta_start=float(betas[0]), beta_end=float(betas[-1]))

    def pipeline_samplers(self) -> dict:
        from diffusers import DPMSolverMultistepScheduler

        from .diffusion.scheduler import DiCoScheduler

        return {
            "DDPM (official: learned variance)": lambda config: DiCoScheduler.from_config(config, sampler="ddpm",
                                                                                          eta=0.0),
            "DDIM": lambda config: DiCoScheduler.from_config(config, sampler="ddim", eta=0.0),
            "DPM-Solver++ (2M)": lambda config: DPMSolverMultistepScheduler.from_config(config),
        }

    def check_scheduler(self, scheduler) -> None:
        if is_flow_scheduler(scheduler):
            raise ValueError(f"this is a DDPM model: {type(scheduler).__name__} samples flow-matching models; use "
                             f"DiCoScheduler or a DDPM-family scheduler (DDIM, DPMSolverMultistep, ...)")

    def pipeline_timesteps(self, scheduler, t, batch: int, device):
        import torch

        return torch.full((batch,), int(t), dtype=torch.long, device=device)

    def scheduler_input(self, scheduler, output, channels: int):
        """A learned-variance output (eps, v) goes whole to the schedulers that read the variance themselves (ours,
        and DDPM with a learned variance type); every other diffusers scheduler takes the noise prediction only."""
        from diffusers import DDPMScheduler

        from .diffusion.scheduler import DiCoScheduler

        if output.shape[1] != 2 * channels:
            return output
        variance_type = getattr(scheduler.config, "variance_type", None)
        if isinstance(scheduler, DiCoScheduler) or (
                isinstance(scheduler, DDPMScheduler) and variance_type in ("learned", "learned_range")):
            return output
        return output[:, :channels]

    def card_text(self) -> dict:
        return {
            "objective_line": "- Objective: DDPM (noise prediction, iDDPM learned-range variance)",
            "sampling": ("iDDPM ancestral sampling with the learned-range variance, 250 steps, classifier-free "
                         "guidance\n  1.5 on the first 3 noise channels (fewer if the model has fewer): the official "
                         "protocol;\n  "),
            "same_as": "= dico sample --seed 0",
            "other_schedulers": ("Other schedulers: `pipe.scheduler = DPMSolverMultistepScheduler.from_config("
                                 "pipe.scheduler.config)` (25 steps is\nplenty), or `DDIMScheduler.from_config(...)`."),
            "process_keys": ("diffusion_steps", "noise_schedule"),
        }


# ----------------------------------------------------------------------------------------------- flow matching
FLOW_PIPELINE_PATHS, FLOW_PIPELINE_PREDICTIONS = ("Linear",), ("velocity",)  # what diffusers' flow schedulers define


@dataclass
class FlowObjective(FlowSettings, Objective):
    """Flow matching as SiT (arXiv 2401.08740): t = 0 noise, t = 1 data; see dico.transport."""

    kind: ClassVar[str] = "flow"
    settings: ClassVar[type] = FlowSettings

    def transport(self):
        from .transport import create_transport

        return create_transport(self.path, self.prediction, self.loss_weight, self.train_eps, self.sample_eps,
                                self.time_sampling, self.logit_mean, self.logit_std)

    def check(self) -> None:
        super().check()
        self.transport()  # the combinations SiT's transport refuses

    def loss_function(self, learn_sigma: bool):
        transport = self.transport()

        def losses(model, x, model_kwargs, keys):
            return transport.training_losses(model, x, model_kwargs, keys=keys)["loss"]

        return losses

    def sample(self, denoiser, noise, options, *, learn_sigma: bool, step_noise=None, device=None,
               progress: bool = False):
        from .transport import sample_loop

        return sample_loop(self.transport(), denoiser, noise, sampler=options.sampler, method=options.method,
                           num_steps=options.steps, atol=options.atol, rtol=options.rtol, shift=options.shift,
                           diffusion_form=options.diffusion_form, diffusion_norm=options.diffusion_norm,
                           last_step=options.last_step, last_step_size=options.last_step_size,
                           step_noise=step_noise)

    def flow_time(self, t: float) -> float:
        return t

    # diffusers' flow-matching schedulers define x_sigma = (1 - sigma) * x0 + sigma * noise, timesteps = sigma *
    # num_train_timesteps and a model output of noise - x0: the model runs at t = 1 - sigma and hands over -v.
    def check_pipeline(self) -> None:
        if self.path not in FLOW_PIPELINE_PATHS or self.prediction not in FLOW_PIPELINE_PREDICTIONS:
            raise ValueError(
                f"DiCoPipeline samples flow-matching models with path {' or '.join(map(repr, FLOW_PIPELINE_PATHS))} "
                f"and prediction {' or '.join(map(repr, FLOW_PIPELINE_PREDICTIONS))} only (diffusers' flow-matching "
                f"schedulers: x_sigma = (1 - sigma) * x0 + sigma * noise, model output noise - x0); this model has "
                f"path {self.path!r} and prediction {self.prediction!r}: sample it with `dico sample`")

    def scheduler(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.check_pipeline()
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)

    def pipeline_samplers(self) -> dict:
        from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

        return {
            "Flow matching, Euler": lambda config: FlowMatchEulerDiscreteScheduler.from_config(config),
            "Flow matching, Heun": lambda config: FlowMatchHeunDiscreteScheduler.from_config(config),
        }

    def check_scheduler(self, scheduler) -> None:
        if not is_flow_scheduler(scheduler):
            raise ValueError(f"this is a flow-matching model (path Linear, prediction velocity): it needs a "
                             f"flow-matching scheduler such as diffusers' FlowMatchEulerDiscreteScheduler, not "
                             f"{type(scheduler).__name__}")

    def pipeline_timesteps(self, scheduler, t, batch: int, device):
        import torch

        model_time = 1 - flow_sigma(scheduler, t).to(device)
        return torch.ones(batch, dtype=torch.float32, device=device) * model_time

    def scheduler_input(self, scheduler, output, channels: int):
        return -output[:, :channels]  # noise - x0 = -v, from the velocity channels (not a learned sigma's half)

    def card_text(self) -> dict:
        return {
            "objective_line": (f"- Objective: flow matching as SiT (path {self.path}, prediction {self.prediction}; "
                               f"t = 0 noise, t = 1 data, the model predicts v = data - noise; time sampling "
                               f"{self.time_sampling})"),
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


def is_flow_scheduler(scheduler) -> bool:
    """Whether a scheduler samples flow matching (diffusers' FlowMatch* schedulers, or a multistep solver set up with
    prediction_type="flow_prediction")."""
    return type(scheduler).__name__.startswith("FlowMatch") or \
        getattr(scheduler.config, "prediction_type", None) == "flow_prediction"


def flow_sigma(scheduler, timestep):
    """The sigma of the scheduler's current step (read from its sigmas, so the model's time 1 - sigma is not
    rounded through timestep / num_train_timesteps); the timestep's sigma for schedulers that keep no sigmas."""
    import torch

    sigmas = getattr(scheduler, "sigmas", None)
    index = getattr(scheduler, "step_index", None)
    if index is None and hasattr(scheduler, "index_for_timestep"):
        begin = getattr(scheduler, "begin_index", None)
        index = begin if begin is not None else scheduler.index_for_timestep(timestep)
    if torch.is_tensor(sigmas) and sigmas.ndim == 1 and index is not None and int(index) < len(sigmas):
        return sigmas[int(index)].to(torch.float32)
    return torch.as_tensor(timestep, dtype=torch.float32) / scheduler.config.num_train_timesteps


# ------------------------------------------------------------------------------------------------------ MeanFlow
@dataclass
class MeanFlowObjective(MeanFlowSettings, Objective):
    """MeanFlow (Geng et al., arXiv 2505.13447): the model predicts the average velocity over [t, r] (a second time
    input, `second_time=True`), trained with the MeanFlow identity by a Jacobian-vector product; one step samples.
    dico's flow time (t = 0 noise, t = 1 data, v = data - noise); the conversion from the paper's is in
    dico.meanflow."""

    kind: ClassVar[str] = "meanflow"
    settings: ClassVar[type] = MeanFlowSettings

    def model_config(self) -> dict:
        return {"second_time": True}

    def loss_function(self, learn_sigma: bool):
        from .meanflow import keyed_losses

        settings = dict(logit_mean=self.meanflow_logit_mean, logit_std=self.meanflow_logit_std,
                        interval_fraction=self.meanflow_interval_fraction, weight_power=self.meanflow_weight_power,
                        weight_eps=self.meanflow_weight_eps, omega=self.meanflow_cfg_omega,
                        kappa=self.meanflow_cfg_kappa)

        def losses(model, x, model_kwargs, keys):
            return keyed_losses(model, x, model_kwargs, keys, **settings)

        return losses

    def sample(self, denoiser, noise, options, *, learn_sigma: bool, step_noise=None, device=None,
               progress: bool = False):
        """`options.steps` jumps (default 1) along the uniform grid; deterministic (no step noise)."""
        from .meanflow import meanflow_sample

        if options.method not in (None, "meanflow"):
            raise ValueError(f"a MeanFlow model samples with its own jumps (--steps N, one evaluation each); "
                             f"--method {options.method!r} is for DDPM and flow models")
        return meanflow_sample(denoiser, noise, options.steps or 1)

    def flow_time(self, t: float) -> float:
        return t

    def scheduler(self):
        from .meanflow.scheduler import MeanFlowScheduler

        return MeanFlowScheduler()

    def pipeline_samplers(self) -> dict:
        from .meanflow.scheduler import MeanFlowScheduler

        return {"MeanFlow (one evaluation per step)": lambda config: MeanFlowScheduler.from_config(config)}

    def check_scheduler(self, scheduler) -> None:
        from .meanflow.scheduler import MeanFlowScheduler

        if not isinstance(scheduler, MeanFlowScheduler):
            raise ValueError(f"this is a MeanFlow model (average velocity over an interval): it samples with "
                             f"dico.meanflow.scheduler.MeanFlowScheduler, not {type(scheduler).__name__}")

    def pipeline_timesteps(self, scheduler, t, batch: int, device):
        import torch

        return torch.full((batch,), scheduler.interval(t)[0], dtype=torch.float32, device=device)

    def pipeline_model_inputs(self, scheduler, t, batch: int, device) -> dict:
        import torch

        return {"r": torch.full((batch,), scheduler.interval(t)[1], dtype=torch.float32, device=device)}

    def scheduler_input(self, scheduler, output, channels: int):
        return output[:, :channels]  # the average velocity (not a learned sigma's half)

    def card_text(self) -> dict:
        return {
            "objective_line": ("- Objective: MeanFlow (average velocity u(z_t, t, r) over [t, r], trained with the "
                               "MeanFlow identity by a Jacobian-vector product; dico's flow time, t = 0 noise, "
                               "t = 1 data)"),
            "sampling": ("one MeanFlow jump x = noise + u(noise, 0, 1) (num_inference_steps=N: N jumps along the "
                         "uniform grid), guidance as trained (folded into the target); "),
            "same_as": "num_inference_steps=1, guidance_scale=1: = dico sample --steps 1 --seed 0",
            "other_schedulers": "Only MeanFlowScheduler samples this model (any number of steps).",
            "process_keys": ("objective", "meanflow_logit_mean", "meanflow_logit_std", "meanflow_interval_fraction",
                             "meanflow_cfg_omega", "meanflow_cfg_kappa"),
        }


# ---------------------------------------------------------------------------------------------------- registry
OBJECTIVES = {cls.kind: cls for cls in (DDPMObjective, FlowObjective, MeanFlowObjective)}


def objective_from_options(options) -> Objective:
    """The objective `options.objective` names, with its settings from `options` (a TrainConfig)."""
    return OBJECTIVES[options.objective].from_options(options)


def objective_from_dict(record) -> Objective:
    """The objective a record describes. Checkpoints written before objectives were recorded (None, or a dict
    without "kind") were trained with the official DDPM; an Objective passes through."""
    if isinstance(record, Objective):
        return record
    record = dict(record or {})
    kind = record.get("kind", DDPMObjective.kind)
    if kind not in OBJECTIVES:
        raise ValueError(f"unknown objective {kind!r} (known: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[kind].from_dict(record)
