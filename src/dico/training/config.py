"""Training configuration: one typed dataclass, saved inside every checkpoint, with the paper's recipes as presets."""

from dataclasses import dataclass, field, fields, replace

from ..repa import RepaConfig


@dataclass
class TrainConfig:
    model: str = "DiCo-XL"
    model_overrides: dict = field(default_factory=dict)
    data: str | None = None  # None: the bundled digits; else extracted latents or an image folder
    image_size: int = 256  # for image folders (pixels); latents carry their own size
    vae: str | None = None  # latents: decoder override for samples (image folders train in pixel space)
    # latents: "scale" (z * 0.18215, the official recipe; default for the SD-VAE) or "channel" ((z - mean_c) / std_c
    # with the statistics measured at extraction; default for other autoencoders)
    latent_norm: str | None = None
    # REPA (dico.repa): on when repa_encoder names the encoder whose tokens the data holds ("digits" for the digits)
    repa_encoder: str | None = None
    repa_weight: float = 0.5
    repa_layer: str = "auto"  # DiCo: encoder_level_2 (any stage or stage.block); DiT: block 8 (4 below 24 blocks)
    repa_stop_step: int | None = None  # HASTE: no alignment from this step on
    repa_projector_dim: int = 2048
    results_dir: str = "results"
    max_steps: int = 400_000
    global_batch: int = 256
    micro_batch: int | None = None  # per-process batch per forward; None = global_batch / processes
    lr: float = 1e-4
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    ema_decay: float = 0.9999
    seed: int = 0
    precision: str = "fp32"  # "fp32" | "bf16" (autocast)
    grad_checkpointing: bool = False
    skip_nonfinite: int = 0  # steps with non-finite loss or gradients to skip before stopping (0: stop at the first)
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    # The objective: the official iDDPM ("ddpm") or flow matching as SiT ("flow", with the options below).
    objective: str = "ddpm"
    path: str = "Linear"  # flow: Linear | GVP | VP
    prediction: str = "velocity"  # flow: velocity | noise | score
    loss_weight: str | None = None  # flow, noise/score prediction: None | velocity | likelihood
    train_eps: float | None = None  # flow: None = SiT's default for the path and prediction
    sample_eps: float | None = None
    time_sampling: str = "uniform"  # flow: uniform | logit-normal (SD3 / LightningDiT)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    log_every: int = 100
    ckpt_every: int = 50_000
    num_workers: int = 4
    # The sample grid written when training ends (one row per class).
    grid_classes: int = 10
    grid_per_class: int = 8
    grid_steps: int = 50
    grid_cfg_scale: float = 1.5

    def repa(self) -> RepaConfig:
        """The REPA settings of this run (stored in checkpoints as "repa")."""
        return RepaConfig(enabled=self.repa_encoder is not None, weight=self.repa_weight, layer=self.repa_layer,
                          projector_dim=self.repa_projector_dim, encoder=self.repa_encoder,
                          stop_step=self.repa_stop_step)


# The official DiCo recipe (AdamW lr 1e-4, no weight decay, constant lr, batch 256, EMA 0.9999).
OFFICIAL = TrainConfig()

PRESETS = {
    "official": {},
    # DiCo-H (paper, Sec. 4): AdamW betas 0.99/0.99, lr 2e-4 with 5k warm-up steps, batch 1024.
    "dico-h": dict(model="DiCo-H", betas=(0.99, 0.99), lr=2e-4, warmup_steps=5000, global_batch=1024),
    # The laptop demo: a tiny DiCo on the bundled digits, trained on a CPU in minutes. The EMA horizon and the
    # learning rate are scaled to a few thousand steps.
    "demo": dict(model="DiCo-Tiny", data=None, max_steps=3000, global_batch=64, lr=1e-3, ema_decay=0.995,
                 warmup_steps=100, log_every=50, ckpt_every=1000, num_workers=0, grid_steps=50,
                 grid_cfg_scale=2.0),
}


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    config = replace(OFFICIAL, **PRESETS[name])
    unknown = set(overrides) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown training option(s) {sorted(unknown)}")
    return replace(config, **overrides)
