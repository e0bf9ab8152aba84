"""Choosing the EMA length after training: rebuild a range of power-function EMAs from a run's snapshots
(dico.training.phema), sample and evaluate each exactly as `dico sample` and `dico evaluate` do, one row per profile.
"""

import json
import tempfile
from dataclasses import fields
from pathlib import Path

from ..config.ema import SweepConfig
from ..config.sampling import SampleConfig, SamplingOptions
from ..data import export_digits
from ..evaluation import evaluate
from ..sampling import sample
from .phema import list_snapshots, reconstruct, save_reconstruction, select_snapshots


def is_digits_run(run_dir) -> bool:
    """Whether the run trained on the bundled digits (its config.json names no --data)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return False
    return json.loads(path.read_text()).get("train", {}).get("data", "?") is None


def training_checkpoint_at(run_dir, step: int):
    path = Path(run_dir) / "checkpoints" / f"{step:07d}.pt"
    return path if path.is_file() else None


def sweep(config: SweepConfig, baselines: bool = True, progress: bool = False) -> list:
    """One dict per rebuilt profile (and, with `baselines`, for the training checkpoint of the same step, if any: its
    fixed-decay EMA and its raw weights): what was evaluated and `dico evaluate`'s metrics."""
    select_snapshots(list_snapshots(config.run_dir), config.step, config.inputs)  # bad input: before any work
    digits = is_digits_run(config.run_dir)
    if config.ref is None and not digits:
        raise ValueError(f"{config.run_dir} did not train on the bundled digits: name the reference images with --ref")
    features = config.features or ("digits" if digits and config.ref is None else "inception")
    sampling = {f.name: getattr(config, f.name) for f in fields(SamplingOptions)}
    rows = []
    with tempfile.TemporaryDirectory(prefix=".dico-sweep-") as scratch:
        scratch = Path(scratch)
        ref = config.ref or str(export_digits(scratch / "digits.npz"))

        def measure(name: str, ckpt, weights: str = "ema", classes=None) -> dict:
            out = scratch / f"{len(rows)}.npz"
            sample(SampleConfig(**sampling, ckpt=str(ckpt), weights=weights, classes=classes,
                                num_samples=config.num_samples, out=str(out), device=config.device,
                                threads=config.threads))
            result = evaluate(ref, out, features=features, device=config.device, use_cache=False, progress=progress,
                              threads=config.threads)
            out.unlink()
            return {"weights": name, **result.to_dict()}

        step = None
        for sigma_rel in config.sigma_rels:
            rec = reconstruct(config.run_dir, sigma_rel, config.step, config.inputs)
            step = rec.step
            ckpt = save_reconstruction(rec, scratch / "reconstruction.pt")
            classes = config.classes or class_cycle(rec.metadata)
            rows.append({"sigma_rel": sigma_rel, "step": rec.step, **measure(f"phema {sigma_rel:g}", ckpt,
                                                                             classes=classes)})
        baseline = training_checkpoint_at(config.run_dir, step) if baselines else None
        if baseline is not None:
            for weights, name in (("ema", "EMA (--ema-decay)"), ("model", "raw weights")):
                rows.append({"sigma_rel": None, "step": step, **measure(name, baseline, weights, classes)})
    return rows


def class_cycle(metadata: dict):
    """Every class in turn for a class-conditional model (None: unconditional)."""
    spec = json.loads(metadata.get("dico_spec", "{}"))
    count = (spec.get("config") or {}).get("num_classes", 0)
    return tuple(range(count)) if count else None


def format_table(rows: list) -> str:
    features = rows[0]["features"] if rows else "digits"
    fid = "FID" if features == "inception" else "Digits-FID"
    lines = [f"| weights | step | {fid} | precision | recall | class accuracy |", "|---|---|---|---|---|---|"]

    def cell(v):
        return "n/a" if v is None else f"{v:.4f}"

    for r in rows:
        lines.append(f"| {r['weights']} | {r['step']} | {cell(r['fid'])} | {cell(r['precision'])} | "
                     f"{cell(r['recall'])} | {cell(r['class_accuracy'])} |")
    return "\n".join(lines)

