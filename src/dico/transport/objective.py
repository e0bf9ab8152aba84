"""The flow-matching objective as data: what a checkpoint stores under "objective" so that sampling and evaluation
rebuild the same Transport with no extra flag (DDPM runs store {"kind": "ddpm", ...})."""

from dataclasses import asdict, dataclass, fields

from .transport import Transport, create_transport


@dataclass
class FlowObjective:
    path: str = "Linear"  # "Linear" | "GVP" | "VP"
    prediction: str = "velocity"  # "velocity" | "noise" | "score"
    loss_weight: str | None = None  # None | "velocity" | "likelihood" (noise/score prediction only)
    train_eps: float | None = None  # None: SiT's default for the path and prediction
    sample_eps: float | None = None
    time_sampling: str = "uniform"  # "uniform" | "logit-normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    kind = "flow"  # a class attribute, not a field: it tags the dict

    def __post_init__(self):
        self.transport()  # refuse an invalid combination when it is made, not when a checkpoint is read back

    def transport(self) -> Transport:
        return create_transport(self.path, self.prediction, self.loss_weight, self.train_eps, self.sample_eps,
                                self.time_sampling, self.logit_mean, self.logit_std)

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "FlowObjective":
        data = dict(data)
        kind = data.pop("kind", cls.kind)
        if kind != cls.kind:
            raise ValueError(f"not a flow objective: kind {kind!r}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown flow objective fields: {', '.join(sorted(unknown))}")
        return cls(**data)
