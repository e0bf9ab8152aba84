"""Training: process-count independence, gradient accumulation, exact resume, checkpoints and the demo command."""

import json
import os
import sys

import pytest
import torch

import dico
from dico.cli import main as cli
from dico.training import train
from helpers import TINY, run_child, tiny_run_config

run_config = tiny_run_config


def weights(path, which="model"):
    return dico.load_checkpoint(path, weights=which)


def max_rel_diff(a, b):
    return max(((a[k] - b[k]).norm() / (b[k].norm() + 1e-12)).item() for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Four uninterrupted steps, one process, global batch 8."""
    results = tmp_path_factory.mktemp("ref")
    final = train(run_config(results), progress=False, write_grid=False)
    return results, final


def test_checkpoint_holds_everything_needed_to_continue(reference):
    results, final = reference
    assert final.name == "0000004.pt"
    assert sorted(p.name for p in (results / "checkpoints").iterdir()) == ["0000002.pt", "0000004.pt"]
    ckpt = torch.load(final, weights_only=True)
    assert {"model", "ema", "opt", "step", "spec", "config", "data", "space", "objective"} <= set(ckpt)
    assert ckpt["step"] == 4 and ckpt["data"]["dataset_size"] == 1797
    assert ckpt["objective"] == {"kind": "ddpm", "noise_schedule": "linear", "diffusion_steps": 1000}
    assert ckpt["spec"]["config"]["hidden_size"] == 16 and ckpt["spec"]["config"]["in_channels"] == 1
    model = dico.load_model(final)  # no model name needed: the spec is inside
    assert max_rel_diff(model.state_dict(), weights(final, "ema")) == 0
    assert max_rel_diff(weights(final, "model"), weights(final, "ema")) > 0


def test_log_records_loss_and_throughput(reference):
    results, _ = reference
    records = [json.loads(line) for line in (results / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 and r["steps_per_s"] > 0 for r in records)


def test_resume_is_exact(reference, tmp_path):
    _, final = reference
    train(run_config(tmp_path, max_steps=2), progress=False, write_grid=False)
    resumed = train(run_config(tmp_path, max_steps=4), resume="auto", progress=False, write_grid=False)
    for which in ("model", "ema"):
        a, b = weights(resumed, which), weights(final, which)
        assert all(torch.equal(a[k], b[k]) for k in a), which
    assert torch.load(resumed, weights_only=True)["opt"]["state"][0]["step"] == 4


def test_gradient_accumulation_matches_the_full_batch(reference, tmp_path):
    _, final = reference
    accumulated = train(run_config(tmp_path, micro_batch=2), progress=False, write_grid=False)
    assert max_rel_diff(weights(accumulated), weights(final)) < 1e-5


def test_two_processes_match_one_at_the_same_global_batch(reference, tmp_path):
    _, final = reference
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dico.cli",
           "train", "--model", "DiCo-Tiny", "--model-options", json.dumps(TINY), "--results-dir", str(tmp_path),
           "--max-steps", "4", "--global-batch", "8", "--lr", "1e-3", "--ema-decay", "0.9", "--log-every", "2",
           "--ckpt-every", "2", "--num-workers", "0", "--no-progress", "--grid-steps", "3"]
    done = run_child(cmd, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "checkpoints" / "0000004.pt"
    assert torch.load(two, weights_only=True)["world"] == 2
    assert max_rel_diff(weights(two), weights(final)) < 1e-5
    assert max_rel_diff(weights(two, "ema"), weights(final, "ema")) < 1e-5
    assert (tmp_path / "samples.png").exists() and "sample grid" in done.stdout


def test_demo_command_trains_and_writes_a_class_grid(tmp_path, capsys):
    assert cli(["train", "--results-dir", str(tmp_path), "--max-steps", "3", "--global-batch", "8",
                "--model-options", json.dumps(TINY), "--grid-steps", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"sample grid (one row per class): {tmp_path / 'samples.png'}" in out
    from PIL import Image

    grid = Image.open(tmp_path / "samples.png")
    assert grid.size == (8 * 34 + 2, 10 * 34 + 2)  # ten rows (digits) of eight 8x8 samples shown at 32 px
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"]["model"] == "DiCo-Tiny" and saved["train"]["data"] is None


def test_resume_auto_on_a_finished_run_trains_nothing_more(reference, tmp_path):
    train(run_config(tmp_path, max_steps=2), progress=False, write_grid=False)
    again = train(run_config(tmp_path, max_steps=2), resume="auto", progress=False, write_grid=False)
    assert again.name == "0000002.pt"


def test_resume_from_a_foreign_file_is_refused(tmp_path):
    bad = tmp_path / "official.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match="not a dico training checkpoint"):
        train(run_config(tmp_path / "run"), resume=str(bad), progress=False)


def test_a_fresh_run_never_overwrites_existing_checkpoints(reference):
    results, final = reference
    before = final.read_bytes()
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(run_config(results), progress=False, write_grid=False)
    assert final.read_bytes() == before


def test_the_fused_optimizer_steps_like_the_reference_adamw(reference):
    from dico.training.optim import adamw

    ckpt = torch.load(reference[1], weights_only=True)
    assert ckpt["opt"]["param_groups"][0]["fused"] is True  # what `dico train` used on this CPU
    torch.manual_seed(0)
    model = dico.create_model("DiCo-Tiny", **TINY)
    params = {fused: [p.detach().clone().requires_grad_() for p in model.parameters()] for fused in (True, False)}
    grads = [torch.randn_like(p) for p in params[True]]
    optimizers = {True: adamw(params[True], lr=1e-2, betas=(0.9, 0.99), weight_decay=0.01),
                  False: torch.optim.AdamW(params[False], lr=1e-2, betas=(0.9, 0.99), weight_decay=0.01)}
    for _ in range(3):
        for fused, opt in optimizers.items():
            for p, g in zip(params[fused], grads):
                p.grad = g.clone()
            opt.step()
    moved = max((a - p.detach()).abs().max().item() for a, p in zip(params[False], model.parameters()))
    assert moved > 1e-3
    assert max((a - b).abs().max().item() for a, b in zip(params[True], params[False])) < 1e-6
