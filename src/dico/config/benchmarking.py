"""What `dico info` and `dico bench` take. BenchConfig is also what dico.benchmarking.benchmark takes from Python;
BenchCommand adds the flags that set up the process around it."""

from dataclasses import dataclass, field
from typing import Annotated, Literal

from tyro.conf import Positional, arg

from ..options import check_int


@dataclass
class InfoConfig:
    """Parameters and GMACs (the paper's GFLOPs) per model, beside the paper's figures."""

    models: Annotated[Positional[list[str]], arg(metavar="[MODEL ...]")] = field(default_factory=list)
    """Registered model names (none: all DiCo sizes and DiT-XL/2)."""
    image_size: int = 256  # image resolution in pixels (latent = image/8)


@dataclass
class BenchConfig:
    """What dico.benchmarking.benchmark times: every model x task x batch size x dtype, on one device."""

    models: list[str] = field(default_factory=lambda: ["DiCo-S"])
    """Registered model names (random weights), or checkpoints read by dico.load_pretrained (their own weights)."""
    tasks: list[Literal["forward", "train", "sample", "train-flow", "train-meanflow"]] = field(
        default_factory=lambda: ["forward"])
    """What to time: a forward, a training step on a plain MSE, a guided sampling run, or a training step of an
    objective's own loss (train-flow: flow matching; train-meanflow: MeanFlow's, with its JVP)."""
    batch_sizes: list[int] = field(default_factory=lambda: [16])  # images per call
    dtypes: list[Literal["fp32", "tf32", "bf16"]] = field(default_factory=lambda: ["fp32"])
    """fp32 (TF32 off), tf32 (CUDA only), bf16 (torch.autocast)."""
    image_size: int = 256  # image resolution in pixels (latent = image/8)
    device: str = "cpu"  # cpu or cuda[:i]
    repeats: int = 5  # timed rounds (median reported)
    warmup: int = 1  # untimed calls per configuration
    sample_steps: Annotated[int, arg(name="steps")] = 10  # sampling steps (each a CFG forward at 2x batch)
    cfg_scale: float = 1.5  # guidance scale of the sampling task
    official: str | None = None  # checkout of shallowdream204/DiCo to compare against
    num_classes: int = 1000  # class labels of the models built
    seed: int = 0  # random weights and inputs
    clock: Literal["wall", "cpu"] = "wall"
    """wall: elapsed time; cpu: process CPU time (robust on a shared machine, use with --threads 1)."""


@dataclass
class BenchCommand(BenchConfig):
    """Throughput of forward passes, training steps and sampling runs, several configurations side by side."""

    threads: int | None = None  # torch.set_num_threads (None: torch's choice)
    tune_malloc: bool = False
    """Apply the glibc malloc settings of the other dico commands (for every model in the run); default: measure as
    in a plain Python process."""
    json: str | None = None  # also write the results to this JSON file
    overwrite: bool = False  # replace an existing --json file
    quiet: bool = False  # no progress lines

    def __post_init__(self):
        check_int("threads", self.threads, 1, none_ok=True)
