"""The training state: what a training checkpoint holds, written and restored by one object.

Each field of TrainingState is one key of the checkpoint, in the order written, and says what resuming does with it:
`restored` fields (the modules, the optimizer, the counters) take the checkpoint's values; `checked` records (the
model spec, the data) must equal the run's or the resume is refused; `recorded` ones describe the run and are only
written. So a new field is added in one place.
"""

from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from ..checkpoints import CheckpointError, atomic_save, read_checkpoint

CHECKPOINT_FORMAT = "dico-train/1"


def restored(older_files=None, **options):
    """`older_files`: the value for checkpoints written before the field existed (None: every checkpoint has it)."""
    return field(metadata={"on_resume": "restore", "older_files": older_files}, **options)


def checked():
    return field(metadata={"on_resume": "check"})


def recorded(**options):
    return field(metadata={"on_resume": "record"}, **options)


@dataclass(kw_only=True)
class TrainingState:
    """The live modules and optimizer, the step counters and the run's records, as one checkpoint.

    `repa` and `repa_projector` are set on REPA runs only; without them the checkpoint has neither key. Likewise
    `text_encoder` and `null_context` on text runs only: what sampling needs to embed prompts as training did.
    """

    model: torch.nn.Module = restored()
    ema: torch.nn.Module = restored()
    opt: torch.optim.Optimizer = restored()
    step: int = restored(default=0)  # optimizer steps taken (skipped ones included)
    skipped_steps: int = restored(default=0, older_files=0)  # steps skipped for a non-finite loss or gradients
    spec: dict = checked()  # the model spec: resuming builds the same model or refuses
    space: dict = recorded()  # what samples are (size, channels, decoding VAE), so `dico sample` needs no flags
    config: dict = recorded()  # the full run configuration, asdict(TrainConfig)
    objective: dict = recorded()  # the objective's record (what sampling needs of it)
    class_names: list | None = recorded()  # what the classes are called (pipelines, the web demo)
    data: dict = checked()  # dataset_size and fingerprint: resuming on other data is refused
    world: int = recorded()  # provenance: how many processes trained it
    repa: dict | None = recorded(default=None)  # the REPA configuration
    repa_projector: torch.nn.Module | None = restored(default=None)  # lives beside the model, never in its weights
    text_encoder: dict | None = recorded(default=None)  # text runs: the encoder's record (TextEncoder.from_dict)
    null_context: torch.Tensor | None = recorded(default=None)  # text runs: the empty caption's tokens, guidance's null
    phema: "PowerEMA | None" = restored(default=None)  # the tracked power-function EMAs (--phema-stds)

    OPTIONAL = ("repa", "repa_projector", "text_encoder", "null_context", "phema")  # written only when set

    def state_dict(self) -> dict:
        checkpoint = {"format": CHECKPOINT_FORMAT}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self.OPTIONAL:
                continue
            checkpoint[f.name] = value.state_dict() if hasattr(value, "state_dict") else value
        return checkpoint

    def save(self, path) -> None:
        atomic_save(self.state_dict(), path)

    def load(self, checkpoint: dict, source) -> None:
        """Continue from `checkpoint` (read from `source`, which errors name). Refused before anything is loaded
        when it holds another model, was trained on other data, or lacks the REPA projector this run trains."""
        self.check(checkpoint, source)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata["on_resume"] != "restore" or value is None:  # None: REPA off, a saved projector is unused
                continue
            if hasattr(value, "load_state_dict"):
                value.load_state_dict(checkpoint[f.name])
            elif f.metadata["older_files"] is not None:
                setattr(self, f.name, int(checkpoint.get(f.name, f.metadata["older_files"])))
            else:
                setattr(self, f.name, int(checkpoint[f.name]))

    def check(self, checkpoint: dict, source) -> None:
        if checkpoint["spec"] != self.spec:
            raise CheckpointError(f"{source} holds {checkpoint['spec']}, but this run builds {self.spec}")
        saved_data = {k: checkpoint["data"].get(k, self.data[k]) for k in self.data}  # older files: size only
        if saved_data != self.data:
            raise CheckpointError(f"{source} was trained on other data ({saved_data['dataset_size']} samples, "
                                  f"fingerprint {str(saved_data['fingerprint'])[:12]}) than "
                                  f"{self.config['data'] or 'the digits'} ({self.data['dataset_size']} samples, "
                                  f"fingerprint {str(self.data['fingerprint'])[:12]})")
        if self.repa_projector is not None and "repa_projector" not in checkpoint:
            raise CheckpointError(f"{source} was trained without REPA; resume it without --repa-encoder")
        if self.phema is not None and "phema" not in checkpoint:  # a profile's average starts at step 0
            raise CheckpointError(f"{source} tracked no power-function EMAs; resume it without --phema-stds")


@dataclass
class ResumePoint:
    """A training checkpoint to continue from, read once: its path and contents."""

    path: Path
    checkpoint: dict

    @property
    def step(self) -> int:
        return int(self.checkpoint["step"])


def read_training_checkpoint(path) -> dict:
    ckpt = read_checkpoint(path)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a dico training checkpoint (format {ckpt.get('format')!r}); "
                              "to fine-tune from official weights, load them with dico.load_checkpoint instead")
    return ckpt
