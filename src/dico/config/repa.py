"""REPA's settings as data: what TrainConfig.repa() builds and training checkpoints store as "repa"."""

from dataclasses import dataclass

RESIZE_MODES = ("target", "features")


@dataclass
class RepaConfig:
    """What the trainer needs to build and weigh the alignment loss; stored in training checkpoints."""

    enabled: bool = False
    weight: float = 0.5  # REPA's proj-coeff
    layer: str = "auto"  # DiCo: "encoder_level_2"; DiT: REPA's depth ("4" below 24 blocks, else "8")
    projector_dim: int = 2048  # REPA's projector-dim
    encoder: str | None = None  # the frozen encoder whose patch tokens are the targets (stored with the data)
    stop_step: int | None = None  # HASTE: no alignment from this step on (None: align throughout)
    resize: str = "target"  # where grids differ: "target" resamples the encoder grid, "features" the projection

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"REPA resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.weight < 0:
            raise ValueError(f"REPA weight must be >= 0, got {self.weight}")
        if self.stop_step is not None and self.stop_step < 0:
            raise ValueError(f"REPA stop step must be >= 0 or None, got {self.stop_step}")

    def weight_at(self, step: int) -> float:
        return repa_weight_at(self, step)


def repa_weight_at(config: RepaConfig, step: int) -> float:
    """The alignment weight at optimisation step `step` (0-based): `config.weight` while enabled, 0 from
    `config.stop_step` on. HASTE (arXiv 2505.16792) finds that alignment helps early and hinders late training;
    a hard stop is its simplest form."""
    if not config.enabled:
        return 0.0
    if config.stop_step is not None and step >= config.stop_step:
        return 0.0
    return float(config.weight)
