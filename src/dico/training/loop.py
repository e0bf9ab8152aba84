"""The training loop: one function over explicit state.

Determinism: the data order is a permutation keyed by (seed, epoch); each sample's timestep, noise and label
dropout are keyed by (seed, step, position in the global batch). So a run's weights do not depend on how the global
batch is split over processes and accumulation rounds, and resuming from a checkpoint continues exactly.
"""

import contextlib
import functools
import json
import math
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.utils.checkpoint
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoints import remove_stale_temp_files
from ..data import build_dataset
from ..distributed import Dist, all_mean, barrier, setup, teardown
from ..config import TrainConfig, save_config
from ..models import build_model, model_spec
from ..objectives import objective_from_options
from ..options import check_writable_dir
from ..randomness import PURPOSES, keyed_generator, keyed_uniform
from ..repa import RepaLoss, repa_dataset
from ..sampling import write_class_grid
from ..sampling.prompts import grid_prompts, write_prompt_grid
from ..threads import ThreadPolicy
from .conditions import condition_dropout, condition_overrides
from .optim import adamw
from .phema import PowerEMA, disk_line, remove_partial_snapshots, snapshot_dir, write_snapshots
from .state import ResumePoint, TrainingState, read_training_checkpoint


class StepBatches:
    """Yields, for each step from `start_step`, the (epoch, index) keys of this process's micro-batches.

    The global sample stream is the concatenation of keyed per-epoch permutations; step s owns stream positions
    [s*B, (s+1)*B). Position p of a step goes to accumulation round p // (world*micro) and to rank
    (p // micro) % world, so every split of the global batch covers the same samples.
    """

    def __init__(self, size: int, global_batch: int, micro: int, env: Dist, seed: int, start_step: int, end_step: int):
        self.size, self.global_batch, self.micro, self.env = size, global_batch, micro, env
        self.seed, self.start_step, self.end_step = seed, start_step, end_step
        self._perm_epoch, self._perm = None, None

    def positions(self, accum_round: int) -> list:
        first = accum_round * self.env.world * self.micro + self.env.rank * self.micro
        return list(range(first, first + self.micro))

    def key(self, stream_pos: int):
        epoch, offset = divmod(stream_pos, self.size)
        if epoch != self._perm_epoch:
            generator = keyed_generator(self.seed, PURPOSES["data"], epoch)
            self._perm, self._perm_epoch = torch.randperm(self.size, generator=generator), epoch
        return epoch, int(self._perm[offset])

    def __iter__(self):
        rounds = self.global_batch // (self.env.world * self.micro)
        for step in range(self.start_step, self.end_step):
            for a in range(rounds):
                yield [self.key(step * self.global_batch + p) for p in self.positions(a)]

    def __len__(self):
        return (self.end_step - self.start_step) * self.global_batch // (self.env.world * self.micro)


class KeyedItems(torch.utils.data.Dataset):
    """Dataset view indexed by (epoch, index): per-item augmentation randomness is keyed by both."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def enable_gradient_checkpointing(model) -> None:
    """Recompute each block's activations in the backward pass (memory for compute); weights are untouched."""
    blocks = model.blocks() if callable(getattr(model, "blocks", None)) else list(model.blocks)
    for block in blocks:
        block.forward = functools.partial(
            torch.utils.checkpoint.checkpoint, block.forward, use_reentrant=False
        )


@torch.no_grad()
def update_ema(ema, model, decay: float) -> None:
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in model.parameters()]
    torch._foreach_mul_(ema_params, decay)
    torch._foreach_add_(ema_params, params, alpha=1 - decay)


def checkpoint_dir(results_dir) -> Path:
    return Path(results_dir) / "checkpoints"


def newest_checkpoint(results_dir) -> Path | None:
    found = sorted(checkpoint_dir(results_dir).glob("[0-9]*.pt"))
    return found[-1] if found else None


def resume_point(resume, results_dir) -> ResumePoint | None:
    """What `--resume` names: None/""/"none" (start fresh), "auto" (the newest checkpoint in `results_dir`, if any)
    or a checkpoint path. A ResumePoint passes through unchanged, so the file is read once however often asked."""
    if isinstance(resume, ResumePoint):
        return resume
    if resume in (None, "", "none"):
        return None
    path = newest_checkpoint(results_dir) if resume == "auto" else Path(resume)
    if path is None:
        return None
    if not path.exists():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
    return ResumePoint(path, read_training_checkpoint(path))


def config_from_checkpoint(point, **overrides) -> TrainConfig:
    """The run configuration a checkpoint was written with, with `overrides` applied (e.g. a larger max_steps).
    `point`: a ResumePoint or a checkpoint path."""
    if not isinstance(point, ResumePoint):
        point = ResumePoint(Path(point), read_training_checkpoint(point))
    saved = dict(point.checkpoint["config"])
    saved["betas"] = tuple(saved["betas"])
    return TrainConfig(**{**saved, **overrides})


def learning_rate(config: TrainConfig, step: int) -> float:
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr


class RunLog:
    """jsonl + TensorBoard log on the main process."""

    def __init__(self, results_dir: Path, enabled: bool):
        self.enabled = enabled
        self.writer = None
        if enabled:
            self.path = results_dir / "log.jsonl"
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(results_dir / "tensorboard"))
            except ImportError:  # TensorBoard is optional: the jsonl log always exists
                self.writer = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{key}", value, record["step"])
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run between two steps, after saving a consistent checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        saved = f"saved {checkpoint}; continue with --resume auto" if checkpoint else "nothing new to save"
        super().__init__(f"interrupted by {name} after step {step}: {saved}")


class NonFiniteError(ArithmeticError):
    """The loss or the gradients stopped being finite numbers."""


class StopSignals:
    """While active, SIGINT and SIGTERM (what schedulers such as SLURM or Kubernetes send before preemption) only
    set a flag that the loop reads between steps, so the run stops at a consistent state and saves it. A second
    SIGINT stops at once (KeyboardInterrupt), saving only if the state is consistent at that moment."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received = None
        self.previous = {}

    def handle(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            self.previous = {sig: signal.signal(sig, self.handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def all_finite(tensors) -> bool:
    return bool(torch.isfinite(torch.stack([torch.linalg.vector_norm(t.detach().float()) for t in tensors])).all())


def save_checkpoint(state: TrainingState, results: Path, env: Dist, sync: bool = True) -> Path:
    """Write `state` from the main process as the checkpoint of its step; `sync=False` (emergency saves) skips the
    barrier, which processes that are not here would never reach. Non-finite weights are never written (every process
    checks, so all stop together)."""
    path = checkpoint_dir(results) / f"{state.step:07d}.pt"
    tracked = state.phema.parameters() if state.phema is not None else []
    if not all_finite(list(state.model.parameters()) + list(state.ema.parameters()) + tracked):
        raise NonFiniteError(f"the weights after step {state.step} are not finite; not saving them (the newest "
                             f"checkpoint stays the last good one)")
    if env.main:
        state.save(path)
    if sync:
        barrier()
    return path


def train(config: TrainConfig, resume=None, device: str | None = None, progress: bool = True,
          write_grid: bool = True, threads=None) -> Path:
    """Train (or resume) a run; returns the path of the final checkpoint.

    Nothing is written until the data, the model and the run settings have been checked, so a run that cannot start
    leaves no results folder behind. SIGINT/SIGTERM save a consistent checkpoint and raise TrainingInterrupted; any
    other error saves an emergency checkpoint when the state is consistent (never mid-update, never non-finite
    weights); non-finite losses or gradients raise NonFiniteError naming the step (or skip up to
    `config.skip_nonfinite` such steps). `threads`: torch's CPU threads while training (dico.threads.ThreadPolicy:
    None leaves them alone, N or "auto").
    """
    env = setup(device)
    cpu_threads = ThreadPolicy(threads, env.device)
    results = Path(config.results_dir)
    check_writable_dir("results_dir", results)
    point = resume_point(resume, results)
    if resume == "auto" and point is None and env.main:
        print(f"--resume auto: no checkpoint in {checkpoint_dir(results)}, starting a fresh run")
    dataset, facts = build_dataset(config.data, image_size=config.image_size, seed=config.seed, vae=config.vae,
                                   latent_norm=config.latent_norm)
    repa_config = config.repa()
    if repa_config.enabled:  # items become (x, y, encoder tokens of the same image)
        dataset, repa_dim = repa_dataset(dataset, config.repa_encoder)
    objective = objective_from_options(config)  # (what it needs of the network comes before the run's overrides)
    spec = model_spec(config.model, **{"in_channels": facts.in_channels, **condition_overrides(config.model, facts),
                                       "input_size": facts.resolution, **objective.model_config(),
                                       **config.model_overrides})
    micro = config.micro_batch or config.global_batch // env.world
    if micro < 1 or config.global_batch % (env.world * micro):
        raise ValueError(f"global batch {config.global_batch} is not divisible by processes ({env.world}) x "
                         f"micro-batch ({micro})")
    rounds = config.global_batch // (env.world * micro)
    torch.manual_seed(config.seed)  # identical initial weights on every process
    model = build_model(spec).to(env.device)
    ema = build_model(spec).to(env.device).requires_grad_(False).eval()
    ema.load_state_dict(model.state_dict())
    phema = PowerEMA(model, config.phema_stds) if config.phema_stds else None
    params = list(model.parameters())
    repa = None
    if repa_config.enabled:  # the projector lives beside the model: never in its (or the EMA's) state dict
        repa = RepaLoss(model, repa_config, repa_dim).to(env.device)
        params += list(repa.projector.parameters())
    opt = adamw(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
    # The run's objective (recorded in checkpoints) and its per-sample losses, every draw keyed by (seed, step,
    # position) so that neither depends on how the global batch is split.
    losses_of = objective.loss_function(spec["config"]["learn_sigma"])
    state = TrainingState(model=model, ema=ema, opt=opt, spec=spec, space=asdict(facts.space), config=asdict(config),
                          objective=objective.to_dict(), class_names=facts.class_names,
                          data={"dataset_size": len(dataset), "fingerprint": facts.fingerprint}, world=env.world,
                          **({} if repa is None else {"repa": asdict(repa_config), "repa_projector": repa.projector}),
                          **({} if not facts.is_text else {"text_encoder": facts.text_encoder,
                                                           "null_context": facts.null_context.cpu()}),
                          phema=phema)
    if point is not None:
        state.load(point.checkpoint, point.path)
        if env.main:
            print(f"resumed from {point.path} at step {state.step}")

    label_dropout = condition_dropout(spec, facts, config.caption_dropout)  # labels or captions, keyed alike
    if getattr(model, "y_embedder", None) is not None:  # (text models have no label table)
        model.y_embedder.drop_in_forward = False  # dropout is drawn below, keyed per sample
    if config.grad_checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    wrapped, wrapped_repa = model, repa
    if env.world > 1:
        wrapped = DistributedDataParallel(model, device_ids=[env.device] if env.device.type == "cuda" else None)
        if repa is not None:  # its own DDP: the projector's gradients are averaged like the model's
            wrapped_repa = DistributedDataParallel(repa, device_ids=[env.device] if env.device.type == "cuda" else None)
    if repa is not None:
        repa.attach(model)  # a forward hook on the aligned layer; the model's code is unchanged

    batches = StepBatches(len(dataset), config.global_batch, micro, env, config.seed, state.step, config.max_steps)
    loader = DataLoader(KeyedItems(dataset), batch_sampler=batches, num_workers=config.num_workers,
                        pin_memory=env.device.type == "cuda", persistent_workers=False)

    # Only now the results folder: every option above is checked first, so that a bad one gets its own message.
    existing = newest_checkpoint(results)
    if point is None and existing is not None:
        # A fresh run would overwrite these checkpoints step by step: refuse rather than lose them.
        raise ValueError(f"{results} already holds checkpoints (newest: {existing.name}); continue "
                         "with --resume auto, or choose another --results-dir")

    # Everything checked: from here on the run writes.
    if env.main:
        checkpoint_dir(results).mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(checkpoint_dir(results))  # parts of saves a kill interrupted
        if point is None:  # config.yaml reruns the run (`dico train --config`); config.json adds the model spec
            save_config(config)
            (results / "config.json").write_text(json.dumps({"train": asdict(config), "model": spec}, indent=2))
        if phema is not None:
            remove_partial_snapshots(snapshot_dir(results))
            print(disk_line(model, phema.sigma_rels, config.phema_every, config.max_steps, config.phema_dtype,
                            snapshot_dir(results)))
    log = RunLog(results, env.main)

    autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    bar = tqdm(total=config.max_steps, initial=state.step, disable=not (progress and env.main), unit="step",
               dynamic_ncols=True)
    window_loss, window_align, window_steps, window_start = 0.0, 0.0, 0, time.perf_counter()
    last_path, saved_step = None, state.step
    consistent = True  # step counter, weights, EMA and optimizer agree (false only while an update is applied)
    batch_iter = iter(loader)
    try:
        with StopSignals() as stop, cpu_threads:
            while state.step < config.max_steps:
                cpu_threads()  # re-measured every 2 s, so cheap
                step = state.step  # the index of the step being taken: its keys, learning rate and REPA weight
                for group in opt.param_groups:
                    group["lr"] = learning_rate(config, step)
                opt.zero_grad(set_to_none=True)
                step_loss = torch.zeros((), device=env.device)
                step_align = torch.zeros((), device=env.device)
                repa_weight = repa_config.weight_at(step)
                if repa is not None and repa.attached and repa_weight == 0:
                    repa.detach()  # HASTE stop: no more alignment; the projector stays in checkpoints as it is
                for a in range(rounds):
                    x, y, *target = next(batch_iter)
                    x = x.to(env.device, non_blocking=True)
                    cond = facts.conditioning(y.to(env.device, non_blocking=True))
                    keys = [(config.seed, step, p) for p in batches.positions(a)]
                    if label_dropout > 0:
                        drop = keyed_uniform([(k[0], PURPOSES["label_drop"], *k[1:]) for k in keys], env.device)
                        cond = cond.dropped(drop < label_dropout)
                    sync = a == rounds - 1 or env.world == 1
                    context = contextlib.ExitStack()
                    if not sync:
                        context.enter_context(wrapped.no_sync())
                        if repa_weight > 0 and wrapped_repa is not repa:
                            context.enter_context(wrapped_repa.no_sync())
                    with context:
                        with autocast:
                            loss = losses_of(wrapped, x, cond.model_kwargs(), keys).float().mean() / rounds
                            step_loss += loss.detach()
                            if repa_weight > 0:  # the hook kept the aligned layer's output of this forward
                                align = wrapped_repa(target[0].to(env.device, non_blocking=True)) / rounds
                                loss = loss + repa_weight * align
                                step_align += align.detach()
                        loss.backward()
                # One collective per step: the mean loss, whether any process was asked to stop, and whether the
                # (already all-reduced) gradients are finite, so every process takes the same decision.
                grads = [p.grad for p in params if p.grad is not None]
                flags = torch.stack([step_loss, torch.tensor(float(stop.received is not None), device=env.device),
                                     torch.tensor(float(not all_finite(grads)), device=env.device), step_align])
                mean_loss, stop_asked, bad_grads, mean_align = all_mean(flags).tolist()
                if not math.isfinite(mean_loss) or bad_grads > 0:
                    what = "loss" if not math.isfinite(mean_loss) else "gradients"
                    if state.skipped_steps >= config.skip_nonfinite:
                        raise NonFiniteError(f"non-finite {what} at step {step + 1} (loss {mean_loss}); stopping. "
                                             "Lower --lr, use --precision fp32, or allow skipping a few such steps "
                                             "with --skip-nonfinite N")
                    state.skipped_steps += 1
                    opt.zero_grad(set_to_none=True)
                    if env.main:
                        bar.write(f"step {step + 1}: non-finite {what}, step skipped ({state.skipped_steps} of at most "
                                  f"{config.skip_nonfinite})")
                else:
                    consistent = False
                    opt.step()
                    update_ema(ema, model, config.ema_decay)
                if phema is not None:  # every step counts in a profile's time, skipped ones too (weights unchanged)
                    consistent = False
                    phema.update(model, state.step + 1)
                state.step += 1
                consistent = True
                if math.isfinite(mean_loss):
                    window_loss += mean_loss
                    window_align += mean_align
                    window_steps += 1
                bar.update(1)
                if state.step % config.log_every == 0 or state.step == config.max_steps:
                    elapsed = time.perf_counter() - window_start
                    record = {"step": state.step, "loss": window_loss / max(window_steps, 1),
                              "steps_per_s": window_steps / elapsed,
                              "images_per_s": window_steps * config.global_batch / elapsed,
                              "lr": learning_rate(config, step)}
                    if repa is not None:
                        record["repa_loss"] = window_align / max(window_steps, 1)  # "loss" stays the diffusion loss
                    log.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
                    window_loss, window_align, window_steps, window_start = 0.0, 0.0, 0, time.perf_counter()
                if phema is not None and env.main and (state.step % config.phema_every == 0
                                                       or state.step == config.max_steps):
                    write_snapshots(phema, model, state.step, snapshot_dir(results), config.phema_dtype, spec,
                                    state.space, state.objective, facts.class_names)
                if state.step % config.ckpt_every == 0 or state.step == config.max_steps:
                    last_path, saved_step = save_checkpoint(state, results, env), state.step
                # Alone, a signal that came during this step's update stops here; several processes stop together
                # at the step after one of them was signalled (agreed through the collective above).
                if stop_asked > 0 or (env.world == 1 and stop.received is not None):
                    signum = stop.received or signal.SIGTERM  # another process received it
                    path = save_checkpoint(state, results, env) if state.step > saved_step else last_path
                    raise TrainingInterrupted(signum, state.step, path)
    except (TrainingInterrupted, NonFiniteError):
        raise
    except BaseException as err:
        # An error between steps (a bad image, a lost process, a second Ctrl-C while waiting for data) loses
        # nothing done so far; one in the middle of an update saves nothing, since no state would be consistent.
        if consistent and state.step > saved_step and env.main:
            try:
                path = save_checkpoint(state, results, env, sync=False)
            except Exception as save_err:  # e.g. disk full: the original error is what the user needs to see
                print(f"\ncould not save an emergency checkpoint: {save_err}", file=sys.stderr)
            else:
                print(f"\n{type(err).__name__} at step {state.step}: saved {path}; continue with --resume auto",
                      file=sys.stderr)
        raise
    finally:
        bar.close()
        log.close()
    if last_path is None:  # nothing left to train: the run was already complete
        last_path = newest_checkpoint(results)
    if write_grid and config.grid_classes > 0 and env.main and last_path is not None and facts.is_text:
        grid = write_prompt_grid(ema, facts, results / "samples.png", grid_prompts(config.data, config.grid_classes),
                                 per_prompt=config.grid_per_class, steps=config.grid_steps,
                                 cfg_scale=config.grid_cfg_scale, seed=config.seed, device=env.device,
                                 objective=objective)
        print(f"sample grid (one row per prompt): {grid}")
    elif write_grid and config.grid_classes > 0 and env.main and last_path is not None:
        grid = write_class_grid(ema, facts, results / "samples.png", classes=config.grid_classes,
                                per_class=config.grid_per_class, steps=config.grid_steps,
                                cfg_scale=config.grid_cfg_scale, seed=config.seed, device=env.device,
                                objective=objective)
        print(f"sample grid (one row per class): {grid}")
    barrier()
    teardown()
    return last_path
