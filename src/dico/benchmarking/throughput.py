"""Throughput of forward passes, training steps and sampling runs, several configurations side by side.

Every configuration (model x implementation x dtype x batch size) is built once, warmed up, and then timed in
rounds: each round times one call of every configuration in turn, so load from other processes on a shared
machine hits all of them alike. We report the median over rounds. On CUDA each timed call is bracketed by
`torch.cuda.synchronize()`.

Clocks: "wall" (default) is elapsed time. "cpu" is the process's CPU time (time.process_time): on a machine shared
with other jobs it measures the work our process did rather than the time it waited for a core, which keeps ratios
meaningful under load. Use it with one thread (--threads 1); with several, threads waiting at barriers count too.

Precision modes:
- "fp32": plain float32; on CUDA TF32 is switched off for matmuls and convolutions (the paper's protocol).
- "tf32": float32 with TF32 tensor cores allowed for matmuls and convolutions (CUDA only).
- "bf16": float32 weights under `torch.autocast(device_type, dtype=torch.bfloat16)`, as users call it.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated()` above the memory held before the call; on CPU, the peak
growth of the process's resident set during the warm-up calls, sampled every 2 ms from /proc/self/statm (an
estimate: short-lived peaks between samples are missed, memory the allocator kept cached from earlier calls is not
seen). The sampling thread is off during timed calls.
"""

import contextlib
import copy
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoints import load_pretrained
from ..config.benchmarking import BenchConfig
from ..models import build_model, create_model, list_models, model_spec
from ..models.inputs import example_condition
from ..objectives import objective_from_dict
from ..options import check_guidance_scale, check_steps
from ..training.optim import adamw
from .official import official_twin

TASKS = ("forward", "train", "sample", "train-flow", "train-meanflow")
# Training steps of an objective's own loss (its keyed draws, and MeanFlow's Jacobian-vector product), as
# `dico train --objective ...` takes them: task -> objective kind.
OBJECTIVE_TASKS = {"train-flow": "flow", "train-meanflow": "meanflow"}
DTYPES = ("fp32", "tf32", "bf16")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass
class BenchResult:
    model: str
    implementation: str  # "ours" | "official"
    task: str
    batch_size: int
    dtype: str
    device: str
    seconds: list  # per timed round
    peak_memory_bytes: int

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def images_per_second(self) -> float:
        return self.batch_size / self.median_seconds


def looks_like_checkpoint(name: str) -> bool:
    """A local file or a Hub file "owner/repo/file" (what load_pretrained reads), rather than a model name."""
    return Path(name).expanduser().is_file() or (name.count("/") >= 2 and not name.startswith((".", "/", "~")))


def validate(config: BenchConfig):
    unknown = [m for m in config.models if m not in list_models() and not looks_like_checkpoint(m)]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; valid names: {', '.join(list_models())}, or a checkpoint file")
    for values, valid, what in ((config.tasks, TASKS, "task"), (config.dtypes, DTYPES, "dtype")):
        bad = [v for v in values if v not in valid]
        if bad or not values:
            raise ValueError(f"invalid {what}(s) {bad or values}; choose from {', '.join(valid)}")
    if any(b < 1 for b in config.batch_sizes) or not config.batch_sizes:
        raise ValueError(f"batch sizes must be positive integers, got {config.batch_sizes}")
    if config.image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32 (latent = image/8, divisible by 4), got {config.image_size}")
    check_guidance_scale(config.cfg_scale, "cfg_scale")  # the sampling checks of dico.options, as dico sample's
    check_steps(config.sample_steps, "sample_steps")
    try:
        device = torch.device(config.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {config.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch.cuda.is_available() is False")
    if device.type == "cpu" and "tf32" in config.dtypes:
        raise ValueError("tf32 exists only on CUDA; on CPU use fp32 or bf16")
    if config.clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {config.clock!r}")
    if config.repeats < 1 or config.warmup < 0 or config.sample_steps < 1:
        raise ValueError("repeats and sample_steps must be >= 1 and warmup >= 0")


@contextlib.contextmanager
def precision(dtype: str, device: torch.device):
    """The numeric mode of one timed call (see the module docstring)."""
    if device.type == "cuda":
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = dtype == "tf32"
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            yield
    finally:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class _RssSampler:
    """Peak resident-set growth of this process while active (CPU memory estimate)."""

    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self.page
        except OSError:
            return 0

    def __enter__(self):
        self.start = self.peak = self.rss()
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


class _Case:
    """One configuration: a model, its inputs and the callable that performs one timed unit of work."""

    def __init__(self, model, name, implementation, task, batch, dtype, device, config):
        self.model, self.name, self.implementation = model, name, implementation
        self.task, self.batch, self.dtype, self.device, self.config = task, batch, dtype, device, config
        g = torch.Generator().manual_seed(config.seed)
        latent = config.image_size // 8
        channels = model.in_channels
        self.x = torch.randn(batch, channels, latent, latent, generator=g).to(device)
        self.t = torch.randint(0, 1000, (batch,), generator=g).to(device)
        # our models know their classes; the official twin of a registered model has the configured number
        self.num_classes = getattr(model, "num_classes", config.num_classes)
        # class labels, or a text model's context tokens
        self.cond = example_condition(model, batch, g, device, self.num_classes)
        self.target = torch.randn(batch, model.out_channels, latent, latent, generator=g).to(device)
        self.seconds, self.peak = [], 0
        if task in OBJECTIVE_TASKS:
            objective = objective_from_dict({"kind": OBJECTIVE_TASKS[task]})
            self.losses, self.calls = objective.loss_function(model.learn_sigma), 0
        if task == "train" or task in OBJECTIVE_TASKS:
            # Each case trains its own copy, so optimizer state never leaks between implementations. Each
            # implementation steps with the optimizer its own trainer uses: the official train.py a default AdamW,
            # `dico train` the fused one.
            make = adamw if implementation == "ours" else torch.optim.AdamW
            self.optimizer = make(model.parameters(), lr=1e-4, weight_decay=0)

    def run(self):
        with precision(self.dtype, self.device):
            if self.task == "forward":
                with torch.no_grad():
                    self.model(self.x, self.t, **self.cond.model_kwargs())
            elif self.task == "train" or self.task in OBJECTIVE_TASKS:
                if self.task == "train":
                    loss = F.mse_loss(self.model(self.x, self.t, **self.cond.model_kwargs()).float(), self.target)
                else:  # every call draws new times and noise, keyed by (seed, call, position)
                    keys = [(self.config.seed, self.calls, p) for p in range(self.batch)]
                    self.calls += 1
                    loss = self.losses(self.model, self.x, self.cond.model_kwargs(), keys).float().mean()
                loss.backward()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            else:
                self.sample()

    @torch.no_grad()
    def sample(self):
        # A DDIM-like loop: the cost is steps x one guided forward at batch 2N; the update itself is negligible.
        cond = self.cond.cat(self.cond.null()).model_kwargs()
        x = torch.randn_like(self.x)
        steps = self.config.sample_steps
        for i in reversed(range(steps)):
            t = torch.full((2 * len(x),), (i + 0.5) * 1000 / steps, device=x.device)
            out = self.model.forward_with_cfg(torch.cat([x, x]), t, *cond.values(), self.config.cfg_scale)
            x = x - out[: len(x), : x.shape[1]].float() / steps

    def timed(self, measure_memory: bool) -> float:
        """Seconds of one call; with measure_memory, also tracks peak memory (on CPU that runs a sampling thread,
        so warm-up calls measure memory and timed calls do not)."""
        cuda = self.device.type == "cuda"
        clock = CLOCKS[self.config.clock]
        if cuda:
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            start = clock()
            self.run()
            torch.cuda.synchronize(self.device)
            elapsed = clock() - start
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device) - base)
        elif measure_memory:
            with _RssSampler() as rss:
                start = clock()
                self.run()
                elapsed = clock() - start
            self.peak = max(self.peak, rss.growth)
        else:
            start = clock()
            self.run()
            elapsed = clock() - start
        return elapsed


def build_cases(config: BenchConfig):
    device = torch.device(config.device)
    latent = config.image_size // 8
    cases = []
    for name in config.models:
        torch.manual_seed(config.seed)
        if name in list_models():
            # num_classes for the models that have the option (a text model has no label table)
            classes = {"num_classes": config.num_classes} if "num_classes" in model_spec(name)["config"] else {}
            base = create_model(name, input_size=latent, **classes)
            # Random (not zero-initialised) adaLN and output weights, so every path does real work.
            with torch.no_grad():
                for p in base.parameters():
                    if p.requires_grad and p.abs().sum() == 0:
                        p.normal_(0, 0.02)
        else:  # a trained model, through the one loader
            base = load_pretrained(name, image_size=config.image_size).model
        for task in config.tasks:
            task_base = base
            needs = objective_from_dict({"kind": OBJECTIVE_TASKS[task]}).model_config() if task in OBJECTIVE_TASKS \
                else {}
            if needs and any(base.config.get(k) != v for k, v in needs.items()):
                # The same weights in the network the objective needs (MeanFlow: its second time embedders added).
                torch.manual_seed(config.seed)
                task_base = build_model({**base.spec, "config": {**base.spec["config"], **needs}})
                task_base.load_state_dict(base.state_dict(), strict=False)
                with torch.no_grad():
                    for p in task_base.parameters():
                        if p.requires_grad and p.abs().sum() == 0:
                            p.normal_(0, 0.02)
            # The official implementation first, so "vs first" reads as a speed-up over it; the official code has no
            # objective losses (its train.py trains DDPM), so those tasks time ours only.
            for impl in ("official", "ours") if config.official and task not in OBJECTIVE_TASKS else ("ours",):
                for batch in config.batch_sizes:
                    for dtype in config.dtypes:
                        model = copy.deepcopy(task_base) if task != "forward" and task != "sample" else task_base
                        if impl == "official":
                            model = official_twin(model, config.official)
                        model = model.to(device).train(task.startswith("train"))
                        cases.append(_Case(model, name, impl, task, batch, dtype, device, config))
    return cases


def benchmark(config: BenchConfig, progress=None) -> list:
    """Time every configuration of `config`; returns one BenchResult per configuration, in the order given."""
    validate(config)
    cases = build_cases(config)
    for case in cases:
        for _ in range(config.warmup):
            case.timed(measure_memory=True)
    for r in range(config.repeats):
        for case in cases:
            case.seconds.append(case.timed(measure_memory=config.warmup == 0))
        if progress:
            progress(f"round {r + 1}/{config.repeats} done")
    return [BenchResult(c.name, c.implementation, c.task, c.batch, c.dtype, str(c.device), c.seconds, c.peak)
            for c in cases]


def format_table(results: list) -> str:
    """A markdown table: throughput, median time and peak memory per configuration, with two ratio columns:
    `vs first` (throughput relative to the first row of the same task) and `ours/official` (same model, task,
    batch and dtype)."""
    lines = ["| task | model | impl | batch | dtype | device | img/s | ms/iter | peak MiB | vs first | ours/official |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    first = {}
    by_key = {(r.model, r.implementation, r.task, r.batch_size, r.dtype): r for r in results}
    for r in results:
        ref = first.setdefault(r.task, r)
        official = by_key.get((r.model, "official", r.task, r.batch_size, r.dtype))
        vs_official = ""
        if r.implementation == "ours" and official is not None:
            vs_official = f"{r.images_per_second / official.images_per_second:.2f}x"
        lines.append(f"| {r.task} | {r.model} | {r.implementation} | {r.batch_size} | {r.dtype} | {r.device} | "
                     f"{r.images_per_second:.2f} | {1e3 * r.median_seconds:.1f} | {r.peak_memory_bytes / 2**20:.0f} | "
                     f"{r.images_per_second / ref.images_per_second:.2f}x | {vs_official} |")
    return "\n".join(lines)
