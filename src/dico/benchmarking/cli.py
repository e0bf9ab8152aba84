"""`dico info` (params and GMACs per model) and `dico bench` (throughput side by side).

BenchCommand repeats the fields of dico.benchmarking.BenchConfig (whose module imports torch, which `dico bench
--help` must not); tests/test_cli.py checks that the two agree.
"""

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Literal

from tyro.conf import Positional, arg


@dataclass
class InfoConfig:
    """Parameters and GMACs (the paper's GFLOPs) per model, beside the paper's figures."""

    models: Annotated[Positional[list[str]], arg(metavar="[MODEL ...]")] = field(default_factory=list)
    """Registered model names (none: all DiCo sizes and DiT-XL/2)."""
    image_size: int = 256  # image resolution in pixels (latent = image/8)


@dataclass
class BenchCommand:
    """Throughput of forward passes, training steps and sampling runs, several configurations side by side."""

    models: list[str] = field(default_factory=lambda: ["DiCo-S"])
    """Registered model names (random weights), or checkpoints read by dico.load_pretrained (their own weights)."""
    tasks: list[Literal["forward", "train", "sample"]] = field(default_factory=lambda: ["forward"])  # what to time
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
    threads: int | None = None  # torch.set_num_threads (None: torch's choice)
    tune_malloc: bool = False
    """Apply the glibc malloc settings of the other dico commands (for every model in the run); default: measure as
    in a plain Python process."""
    json: str | None = None  # also write the results to this JSON file
    quiet: bool = False  # no progress lines


def run_info(config: InfoConfig) -> int:
    from ..models import list_models
    from .counting import PAPER_COSTS, model_cost

    names = config.models or [n for n in list_models() if n.startswith("DiCo")] + ["DiT-XL/2"]
    print("| model | image | params (M) | GMACs | paper params (M) | paper GMACs |")
    print("|---|---|---|---|---|---|")
    for name in names:
        cost = model_cost(name, config.image_size)
        paper = PAPER_COSTS.get((name, config.image_size))
        p_params, p_macs = (f"{paper[0]:.1f}" if paper[0] else "", f"{paper[1]:.2f}") if paper else ("", "")
        print(f"| {name} | {config.image_size} | {cost.params / 1e6:.1f} | {cost.macs / 1e9:.2f} | {p_params} | "
              f"{p_macs} |")
    return 0


def run_bench(command: BenchCommand) -> int:
    import torch

    from ..cpu_allocator import malloc_tuned
    from .throughput import BenchConfig, benchmark, format_table

    if command.threads:
        torch.set_num_threads(command.threads)
    config = BenchConfig(**{f.name: getattr(command, f.name) for f in fields(BenchConfig)})
    results = benchmark(config, progress=None if command.quiet else lambda msg: print(msg, flush=True))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, clock {command.clock}, "
          f"glibc malloc tuning {'on' if malloc_tuned() else 'off'}")
    print(format_table(results))
    if command.json:
        with open(command.json, "w") as f:
            json.dump([dict(asdict(r), images_per_second=r.images_per_second) for r in results], f, indent=1)
    return 0
