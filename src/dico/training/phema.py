"""Power-function EMA and post-hoc EMA reconstruction (Karras et al., "Analyzing and Improving the Training Dynamics
of Diffusion Models", CVPR 2024: EDM2, Sec. 3 and Appendix C).

A power-function EMA averages the weights of the first t steps with a density proportional to tau^gamma on [0, t];
its width relative to t is sigma_rel (Eq. 123). Training tracks a few such profiles with the per-step decay
beta_t = (1 - 1/t)^(gamma + 1) (Eq. 127 with time counted in steps: the paper counts images, t_next / t_delta is the
same step count) and writes snapshots of them every K steps. Any other profile, at any snapshot step, is then a
linear combination of the snapshots, whose coefficients solve a least-squares problem in the space of profiles
(Algorithm 3): `reconstruct` does that, so the EMA length is chosen after training instead of before.

Snapshots live in RUN/phema, one .safetensors file per (step, profile) named STEP-SIGMAREL.safetensors (e.g.
0001000-0.05.safetensors); each is a complete model file (spec, output space and objective as metadata, as `dico
convert` writes), so `dico sample` can read it directly, and carries its exact step and sigma_rel in metadata.
"""

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import CheckpointError, atomic_save, remove_stale_temp_files, save_safetensors
from ..config.training import check_phema_stds

SNAPSHOT_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
RECONSTRUCTION_FORMAT = "dico-phema/1"


def sigma_rel_of(gamma):
    """The relative standard deviation of the profile tau^gamma on [0, t], divided by t (EDM2 Eq. 123)."""
    gamma = np.float64(gamma)
    return np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def gamma_of(sigma_rel):
    """The exponent gamma whose profile has width `sigma_rel`: Eq. 123 squared and cleared of fractions is the cubic
    gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) = 0 with s = sigma_rel^-2; its largest real root (EDM2 Eq. 126)."""
    sigma_rel = np.asarray(sigma_rel, dtype=np.float64)
    s = sigma_rel.reshape(-1) ** -2
    roots = [np.roots([1.0, 7.0, 16.0 - v, 12.0 - v]) for v in s]
    gamma = np.array([r[np.abs(r.imag) < 1e-9 * max(1.0, np.abs(r).max())].real.max() for r in roots])
    return gamma.reshape(sigma_rel.shape)


def power_beta(sigma_rel: float, step: int) -> float:
    """The decay applied by the update that completes step `step` (1-based): (1 - 1/step)^(gamma + 1). Step 1 gives 0:
    the average of one step is its weights."""
    if step < 1:
        raise ValueError(f"step counts from 1, got {step}")
    return float((1.0 - 1.0 / step) ** (gamma_of(sigma_rel) + 1.0))


def profile_inner_products(steps_a, sigma_a, steps_b, sigma_b) -> np.ndarray:
    """<p_a, p_b> for every pair of profiles (rows a, columns b), where p(tau) = (gamma+1) tau^gamma / t^(gamma+1) on
    [0, t] integrates to one. Integrating the product up to the shorter end t_lo of the two gives
    (gamma_a+1)(gamma_b+1) / (gamma_a+gamma_b+1) * (t_lo / t_hi)^gamma_hi / t_hi, gamma_hi the longer profile's."""
    ta, tb = np.float64(steps_a)[:, None], np.float64(steps_b)[None, :]
    ga, gb = gamma_of(np.float64(sigma_a))[:, None], gamma_of(np.float64(sigma_b))[None, :]
    a_shorter = ta < tb
    t_hi = np.maximum(ta, tb)
    ratio = np.minimum(ta, tb) / t_hi
    gamma_hi = np.where(a_shorter, gb, ga)
    return (ga + 1) * (gb + 1) / (ga + gb + 1) * ratio ** gamma_hi / t_hi


def reconstruction_coefficients(in_steps, in_sigma_rels, out_step, out_sigma_rels) -> np.ndarray:
    """Coefficients (inputs x outputs) that best approximate each output profile by the input snapshots in the
    least-squares sense (the normal equations of Algorithm 3), each column scaled to sum to one so that a constant
    set of weights reconstructs to itself."""
    in_steps, in_sigma_rels = np.broadcast_arrays(np.float64(in_steps), np.float64(in_sigma_rels))
    out_sigma_rels = np.atleast_1d(np.float64(out_sigma_rels))
    out_steps = np.full_like(out_sigma_rels, np.float64(out_step))
    gram = profile_inner_products(in_steps, in_sigma_rels, in_steps, in_sigma_rels)
    target = profile_inner_products(in_steps, in_sigma_rels, out_steps, out_sigma_rels)
    coefficients = np.linalg.solve(gram, target)
    return coefficients / coefficients.sum(axis=0, keepdims=True)


class PowerEMA:
    """The tracked power-function EMAs of a model: one copy of its weights per sigma_rel, in the model's precision.

    Part of the training checkpoint (TrainingState.phema): `state_dict` / `load_state_dict` save and restore them,
    so a resumed run continues them bit for bit.
    """

    def __init__(self, model: torch.nn.Module, sigma_rels):
        self.sigma_rels = check_phema_stds(sigma_rels)
        self.emas = [copy.deepcopy(model).requires_grad_(False).eval() for _ in self.sigma_rels]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """Fold in `model`'s weights after step `step` (1-based): ema <- beta ema + (1 - beta) weights."""
        params = [p.detach() for p in model.parameters()]
        for sigma_rel, ema in zip(self.sigma_rels, self.emas):
            torch._foreach_lerp_(list(ema.parameters()), params, 1.0 - power_beta(sigma_rel, step))

    @torch.no_grad()
    def snapshot_states(self, model: torch.nn.Module, dtype: torch.dtype) -> dict:
        """{sigma_rel: state dict in `dtype`}; buffers are the model's own (they are not averaged)."""
        buffers = dict(model.named_buffers())
        out = {}
        for sigma_rel, ema in zip(self.sigma_rels, self.emas):
            state = {k: (buffers[k] if k in buffers else v).detach().to("cpu", dtype if v.is_floating_point()
                                                                           else v.dtype).contiguous()
                     for k, v in ema.state_dict().items()}
            out[sigma_rel] = state
        return out

    def parameters(self):
        return [p for ema in self.emas for p in ema.parameters()]

    def state_dict(self) -> dict:
        return {"sigma_rels": list(self.sigma_rels), "emas": [ema.state_dict() for ema in self.emas]}

    def load_state_dict(self, state: dict) -> None:
        saved = tuple(float(v) for v in state["sigma_rels"])
        if saved != self.sigma_rels:
            raise CheckpointError(f"the checkpoint tracks power-function EMAs with sigma_rel {list(saved)}, this run "
                                  f"asks for {list(self.sigma_rels)}: resume with --phema-stds "
                                  f"{','.join(map(str, saved))}")
        for ema, ema_state in zip(self.emas, state["emas"]):
            ema.load_state_dict(ema_state)


def relative_error(weights: dict, reference: dict) -> float:
    """||a - b|| / ||b|| over all floating-point tensors of two state dicts taken as one vector."""
    keys = [k for k, v in reference.items() if v.is_floating_point()]
    diff = sum(float((weights[k].double() - reference[k].double()).square().sum()) for k in keys)
    norm = sum(float(reference[k].double().square().sum()) for k in keys)
    return (diff / norm) ** 0.5


# Snapshots on disk ---------------------------------------------------------------------------------------------------

def snapshot_dir(results_dir) -> Path:
    return Path(results_dir) / "phema"


def snapshot_name(step: int, sigma_rel: float) -> str:
    return f"{step:07d}-{sigma_rel:g}.safetensors"


def snapshot_bytes(model: torch.nn.Module, dtype: str) -> int:
    """Bytes of one snapshot's tensors (the file adds a small header)."""
    size = SNAPSHOT_DTYPES[dtype].itemsize
    return sum(t.numel() * (size if t.is_floating_point() else t.element_size()) for t in model.state_dict().values())


def snapshot_steps(start: int, end: int, every: int) -> list:
    """The steps in (start, end] at which snapshots are written: multiples of `every`, and the last step."""
    steps = list(range((start // every + 1) * every, end + 1, every))
    if end > start and (not steps or steps[-1] != end):
        steps.append(end)
    return steps


def disk_line(model, sigma_rels, every: int, max_steps: int, dtype: str, folder) -> str:
    """One line for the start of a run: how many snapshots it writes and the disk they take."""
    count = len(snapshot_steps(0, max_steps, every)) * len(sigma_rels)
    total = count * snapshot_bytes(model, dtype)
    return (f"power-function EMA, sigma_rel {','.join(f'{s:g}' for s in sigma_rels)}: a {dtype} snapshot of each "
            f"every {every} steps, {count} files, {total / 2**20:.1f} MiB in {folder} by step {max_steps}")


def write_snapshots(phema: PowerEMA, model, step: int, folder, dtype: str, spec: dict, space: dict | None,
                    objective: dict, class_names=None) -> list:
    """Write one snapshot per profile for `step` (each file appears whole or not at all). Returns their paths."""
    paths = []
    for sigma_rel, state in phema.snapshot_states(model, SNAPSHOT_DTYPES[dtype]).items():
        record = {"step": step, "sigma_rel": sigma_rel, "dtype": dtype}
        extra = {"dico_phema": json.dumps(record)}
        if class_names is not None:
            extra["dico_class_names"] = json.dumps(list(class_names))
        path = Path(folder) / snapshot_name(step, sigma_rel)
        paths.append(save_safetensors(state, path, spec=spec, space=space, objective=objective, extra=extra))
    return paths


def remove_partial_snapshots(folder) -> list:
    """Delete the parts of snapshot writes that a kill cut short (dico.cache.atomic_write's `.NAME.PID.partial`);
    call it only where no write is under way. Returns what was removed."""
    return remove_stale_temp_files(folder, ".*.partial")


@dataclass(frozen=True)
class Snapshot:
    path: Path
    step: int
    sigma_rel: float


def list_snapshots(run_dir) -> list:
    """The snapshots of a run (RUN/phema, or the folder itself), sorted by (step, sigma_rel)."""
    from safetensors import SafetensorError, safe_open

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no such run folder: {run_dir}")
    folder = snapshot_dir(run_dir) if snapshot_dir(run_dir).is_dir() else run_dir
    found = []
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt") as f:
                record = json.loads((f.metadata() or {}).get("dico_phema", "null"))
        except (SafetensorError, OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path} is not a readable power-function EMA snapshot: {err}") from err
        if record is not None:
            found.append(Snapshot(path, int(record["step"]), float(record["sigma_rel"])))
    if not found:
        raise FileNotFoundError(f"{run_dir} holds no power-function EMA snapshots (train with --phema-stds to write "
                                f"them into RUN/phema)")
    return sorted(found, key=lambda s: (s.step, s.sigma_rel))


def select_snapshots(snapshots: list, step: int | None = None, inputs=None) -> tuple:
    """(the snapshots a reconstruction at `step` uses, that step): those at or before it (default: the newest step),
    of the tracked profiles in `inputs` (None: all)."""
    if inputs is not None:
        inputs = check_phema_stds(inputs, "inputs")
        snapshots = [s for s in snapshots if any(np.isclose(s.sigma_rel, v, rtol=0, atol=1e-9) for v in inputs)]
    if not snapshots:
        raise ValueError(f"no snapshots of the profiles {list(inputs)}")
    newest = max(s.step for s in snapshots)
    step = newest if step is None else int(step)
    if step > newest:
        raise ValueError(f"--step {step}: the newest snapshot is at step {newest}")
    chosen = [s for s in snapshots if 0 < s.step <= step]
    if not chosen:
        raise ValueError(f"--step {step}: no snapshot at or before it (the first is at step {snapshots[0].step})")
    return chosen, step


@dataclass
class Reconstruction:
    """Reconstructed EMA weights (float32) and how they were made."""

    state: dict
    sigma_rel: float
    step: int
    inputs: list  # [(step, sigma_rel, coefficient)] of the snapshots combined
    metadata: dict  # the snapshots' dico metadata (spec, space, objective, class names)
    text: dict  # text runs: text_encoder and null_context (dico.training.phema.text_records)

    def record(self) -> dict:
        return {"sigma_rel": self.sigma_rel, "step": self.step,
                "inputs": [{"step": s, "sigma_rel": r, "coefficient": c} for s, r, c in self.inputs]}


def reconstruct(run_dir, sigma_rel: float, step: int | None = None, inputs=None) -> Reconstruction:
    """The EMA of profile `sigma_rel` at `step` (default: the newest snapshot's step), as the least-squares
    combination of the run's snapshots at or before it (of the tracked profiles `inputs`; None: all)."""
    from safetensors import safe_open

    (sigma_rel,) = check_phema_stds([sigma_rel], "sigma-rel")
    chosen, step = select_snapshots(list_snapshots(run_dir), step, inputs)
    coefficients = reconstruction_coefficients([s.step for s in chosen], [s.sigma_rel for s in chosen], step,
                                               [sigma_rel])[:, 0]
    state, metadata = None, {}
    for snapshot, coefficient in zip(chosen, coefficients):  # one snapshot in memory at a time
        with safe_open(str(snapshot.path), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if state is None:
            state = {k: torch.zeros_like(v, dtype=torch.float64) if v.is_floating_point() else v.clone()
                     for k, v in tensors.items()}
        elif set(tensors) != set(state):
            raise CheckpointError(f"{snapshot.path} holds other tensors than {chosen[0].path}: not one run's snapshots")
        for k, v in tensors.items():
            if v.is_floating_point():
                state[k] += float(coefficient) * v.double()
            else:
                state[k] = v.clone()
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return Reconstruction(state, sigma_rel, step, [(s.step, s.sigma_rel, float(c)) for s, c in zip(chosen,
                                                                                                     coefficients)],
                          metadata, text_records(run_dir) if snapshot_dir(run_dir).is_dir() else {})


def text_records(run_dir) -> dict:
    """Text runs: the text encoder's record and the null context (the empty caption's tokens), which sampling needs
    beside the weights; snapshots hold weights only, so they come from the run's newest training checkpoint (read
    memory-mapped: only these entries are touched). {} for other runs."""
    found = sorted((Path(run_dir) / "checkpoints").glob("[0-9]*.pt"))
    if not found:
        return {}
    ckpt = torch.load(found[-1], map_location="cpu", weights_only=True, mmap=True)
    return {k: (ckpt[k].clone() if isinstance(ckpt[k], torch.Tensor) else ckpt[k])
            for k in ("text_encoder", "null_context") if ckpt.get(k) is not None}


def reconstruction_checkpoint(rec: Reconstruction) -> dict:
    """A checkpoint with the reconstruction as its "ema" and what loaders need beside the weights (the model spec,
    output space, objective and class names): `dico sample`, `dico convert` and the pipeline read it as they read a
    training checkpoint's EMA. It holds no raw weights or optimizer, so it cannot be resumed."""
    def meta(key):
        return json.loads(rec.metadata[key]) if key in rec.metadata else None

    return {"format": RECONSTRUCTION_FORMAT, "ema": rec.state, "spec": meta("dico_spec"), "space": meta("dico_space"),
            "objective": meta("dico_objective"), "class_names": meta("dico_class_names"), "phema": rec.record(),
            **rec.text}


def save_reconstruction(rec: Reconstruction, out) -> Path:
    atomic_save(reconstruction_checkpoint(rec), out)
    return Path(out)
