"""Power-function EMA and post-hoc reconstruction (EDM2): the closed forms, tracking during training (snapshots, exact
resume), `dico ema reconstruct` / `sweep`, and a side-by-side check against EDM2's own training/phema.py."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

import dico
from dico.checkpoints import CheckpointError, convert
from dico.cli import main as cli
from dico.training import train
from dico.training.phema import (PowerEMA, gamma_of, list_snapshots, power_beta, profile_inner_products, reconstruct,
                                 reconstruction_coefficients, relative_error, save_reconstruction, sigma_rel_of, snapshot_steps)
from helpers import rel_err, tiny_run_config

STDS = (0.05, 0.1)


# The closed forms ---------------------------------------------------------------------------------------------------

def test_sigma_rel_and_gamma_are_inverse_and_match_the_papers_pairs():
    for sigma in (0.01, 0.05, 0.1, 0.2, 0.28):
        assert sigma_rel_of(gamma_of(sigma)) == pytest.approx(sigma, rel=1e-12)
    for gamma in (0.5, 1.0, 6.94, 16.97, 100.0):
        assert gamma_of(sigma_rel_of(gamma)) == pytest.approx(gamma, rel=1e-9)
    # EDM2 (Sec. 3.1): gamma 16.97 is sigma_rel 0.05 and gamma 6.94 is sigma_rel 0.10.
    assert gamma_of(0.05) == pytest.approx(16.97, abs=5e-3)
    assert gamma_of(0.10) == pytest.approx(6.94, abs=5e-3)
    assert sigma_rel_of(0.0) == pytest.approx((1 / 12) ** 0.5)  # gamma 0: the flat average


def test_the_per_step_decay_makes_the_exact_power_weighted_average():
    # ema_t * t^(g+1) = ema_{t-1} * (t-1)^(g+1) + (t^(g+1) - (t-1)^(g+1)) x_t: step tau weighs tau^(g+1)-(tau-1)^(g+1).
    gamma, steps = float(gamma_of(0.1)), 50
    xs = torch.randn(steps, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ema = torch.zeros((), dtype=torch.float64)
    for t in range(1, steps + 1):
        ema = power_beta(0.1, t) * ema + (1 - power_beta(0.1, t)) * xs[t - 1]
    tau = torch.arange(1, steps + 1, dtype=torch.float64)
    weights = tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)
    assert ema.item() == pytest.approx((weights * xs).sum().item() / steps ** (gamma + 1), rel=1e-12)
    assert power_beta(0.1, 1) == 0.0


def test_profiles_are_unit_integrals_whose_inner_products_match_quadrature():
    a = profile_inner_products([300.0], [0.05], [1000.0], [0.1])[0, 0]
    tau = np.linspace(0, 300, 2_000_001)
    ga, gb = gamma_of(0.05), gamma_of(0.1)
    pa = (ga + 1) * tau ** ga / 300 ** (ga + 1)
    pb = (gb + 1) * tau ** gb / 1000 ** (gb + 1)
    assert a == pytest.approx(np.trapezoid(pa * pb, tau), rel=1e-6)
    assert np.trapezoid(pa, tau) == pytest.approx(1.0, rel=1e-6)


def test_a_tracked_profile_at_its_own_snapshot_is_that_snapshot_alone():
    steps = [s for s in (100, 200, 300, 400) for _ in STDS]
    sigmas = [r for _ in (100, 200, 300, 400) for r in STDS]
    coefficients = reconstruction_coefficients(steps, sigmas, 300, [0.05, 0.1])
    expected = np.zeros((8, 2))
    expected[4, 0] = expected[5, 1] = 1.0
    assert np.abs(coefficients - expected).max() < 1e-6
    other = reconstruction_coefficients(steps, sigmas, 400, [0.07, 0.2])
    assert np.allclose(other.sum(axis=0), 1.0)
    assert np.abs(other[:, 0]).max() < 10  # a well-posed combination, not cancelling giants


def test_reconstruction_rebuilds_an_untracked_profile_of_a_smooth_trajectory():
    """Weights drifting as x(tau) = sin(tau / 300): the EMA of profile 0.07 at step 1000, rebuilt from the snapshots of
    0.05 and 0.1 every 50 steps, equals its exact power-weighted average."""
    def ema_at(t, sigma):
        return float(np.sum(np.diff(np.arange(t + 1) ** (gamma_of(sigma) + 1)) * np.sin(np.arange(1, t + 1) / 300))
                     / t ** (gamma_of(sigma) + 1))

    steps = [s for s in range(50, 1001, 50) for _ in STDS]
    sigmas = [r for _ in range(50, 1001, 50) for r in STDS]
    snapshots = np.array([ema_at(s, r) for s, r in zip(steps, sigmas)])
    coefficients = reconstruction_coefficients(steps, sigmas, 1000, [0.07])[:, 0]
    assert snapshots @ coefficients == pytest.approx(ema_at(1000, 0.07), abs=2e-3)
    assert abs(ema_at(1000, 0.07) - ema_at(1000, 0.05)) > 0.02  # the profiles differ by far more than that


def test_snapshot_steps_are_the_multiples_and_the_last_step():
    assert snapshot_steps(0, 10, 4) == [4, 8, 10]
    assert snapshot_steps(4, 12, 4) == [8, 12]
    assert snapshot_steps(10, 10, 4) == []


def test_bad_profiles_are_refused_with_one_line():
    model = torch.nn.Linear(2, 2)
    for bad in ((0.0,), (0.3,), (0.05, 0.05), ("x",)):
        with pytest.raises(ValueError, match="sigma_rel"):
            PowerEMA(model, bad)
    with pytest.raises(ValueError, match="phema-stds"):
        tiny_run_config("r", phema_stds=(0.5,))


# Tracking during training -------------------------------------------------------------------------------------------

def phema_config(results, **overrides):
    return tiny_run_config(results, **{"phema_stds": STDS, "phema_every": 1, "grid_classes": 0, **overrides})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Four steps with two tracked profiles, a snapshot after each step."""
    results = tmp_path_factory.mktemp("phema")
    final = train(phema_config(results), progress=False, write_grid=False)
    return results, final


def test_snapshots_are_written_for_every_profile_and_step(run, capsys):
    results, final = run
    snapshots = list_snapshots(results)
    assert [(s.step, s.sigma_rel) for s in snapshots] == [(t, r) for t in (1, 2, 3, 4) for r in STDS]
    assert sorted(p.name for p in (results / "phema").iterdir())[:2] == ["0000001-0.05.safetensors",
                                                                        "0000001-0.1.safetensors"]
    # Each snapshot is a model file: `dico sample` reads it as it is, in fp16 by default.
    loaded = dico.load_pretrained(snapshots[-1].path)
    assert loaded.space.resolution == 8 and next(iter(loaded.checkpoint["weights"].values())).dtype == torch.float16
    # The fp32 EMAs in the checkpoint are what the last snapshots hold, rounded to fp16.
    ckpt = torch.load(final, weights_only=True)
    assert ckpt["phema"]["sigma_rels"] == list(STDS)
    tracked = ckpt["phema"]["emas"][1]
    snap = dico.load_checkpoint(snapshots[-1].path)
    assert 0 < relative_error(snap, tracked) < 1e-3


def test_the_tracked_emas_are_the_power_averages_of_the_raw_weights(tmp_path):
    """Checkpoints after every step give the raw weights; the tracked EMA at step 3 is their exact power average."""
    results = tmp_path / "run"
    train(phema_config(results, max_steps=3, ckpt_every=1), progress=False, write_grid=False)
    raw = [torch.load(results / "checkpoints" / f"{t:07d}.pt", weights_only=True)["model"] for t in (1, 2, 3)]
    tracked = torch.load(results / "checkpoints" / "0000003.pt", weights_only=True)["phema"]["emas"][0]
    gamma = float(gamma_of(0.05))
    weights = [(t ** (gamma + 1) - (t - 1) ** (gamma + 1)) / 3 ** (gamma + 1) for t in (1, 2, 3)]
    for key in ("x_embedder.proj.weight", "final_layer.out_proj.weight"):
        expected = sum(w * r[key].double() for w, r in zip(weights, raw))
        assert rel_err(tracked[key], expected) < 1e-5


def test_resume_continues_the_tracked_emas_and_snapshots_bit_for_bit(run, tmp_path):
    results, final = run
    train(phema_config(tmp_path, max_steps=2), progress=False, write_grid=False)
    (tmp_path / "phema" / ".0000003-0.05.safetensors.123.partial").write_bytes(b"cut short")  # a killed write
    resumed = train(phema_config(tmp_path), resume="auto", progress=False, write_grid=False)
    a, b = torch.load(resumed, weights_only=True)["phema"], torch.load(final, weights_only=True)["phema"]
    for ema_a, ema_b in zip(a["emas"], b["emas"]):
        assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_b)
    for name in ("0000003-0.05.safetensors", "0000004-0.1.safetensors"):  # (safetensors orders its header freely)
        with safe_open(str(tmp_path / "phema" / name), "pt") as f, safe_open(str(results / "phema" / name), "pt") as g:
            assert f.metadata() == g.metadata() and set(f.keys()) == set(g.keys())
            assert all(torch.equal(f.get_tensor(k), g.get_tensor(k)) for k in f.keys())
    assert not list((tmp_path / "phema").glob(".*"))  # the killed write's part is gone


def test_resume_with_other_profiles_or_none_before_is_refused(run, tmp_path):
    results, final = run
    with pytest.raises(CheckpointError, match="--phema-stds 0.05,0.1"):
        train(phema_config(tmp_path, phema_stds=(0.05,)), resume=str(final), progress=False, write_grid=False)
    plain = train(tiny_run_config(tmp_path / "plain", max_steps=2, grid_classes=0), progress=False, write_grid=False)
    with pytest.raises(CheckpointError, match="tracked no power-function EMAs"):
        train(phema_config(tmp_path / "plain"), resume=str(plain), progress=False, write_grid=False)


def test_training_prints_the_disk_the_snapshots_will_take(tmp_path, capsys):
    code = cli(["train", "--results-dir", str(tmp_path / "r"), "--model", "DiCo-Tiny", "--model-options",
                json.dumps({"hidden_size": 16, "depth": [1, 1, 1, 1, 1]}), "--max-steps", "2", "--global-batch", "4",
                "--grid-classes", "0", "--no-progress", "--threads", "1", "--phema-stds", "0.05,0.1",
                "--phema-every", "1", "--phema-dtype", "fp32"])
    assert code == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("power-function EMA"))
    size = sum(p.stat().st_size for p in (tmp_path / "r" / "phema").iterdir())
    assert "4 files" in line and "fp32" in line
    assert float(line.split(" MiB")[0].rsplit(" ", 1)[1]) == pytest.approx(size / 2**20, rel=0.05)


# Reconstruction -----------------------------------------------------------------------------------------------------

def test_rebuilding_a_tracked_profile_at_its_snapshot_gives_that_snapshot(run):
    results, _ = run
    for step, sigma in ((4, 0.05), (2, 0.1)):
        rec = reconstruct(results, sigma, step)
        snap = dico.load_checkpoint(results / "phema" / f"{step:07d}-{sigma:g}.safetensors")
        assert all(s <= step for s, _, _ in rec.inputs)
        assert relative_error(rec.state, snap) < 1e-6


def test_a_reconstruction_is_a_checkpoint_that_sample_convert_and_the_pipeline_read(run, tmp_path):
    results, _ = run
    rec = reconstruct(results, 0.07)
    out = save_reconstruction(rec, tmp_path / "r.pt")
    loaded = dico.load_pretrained(out)
    assert all(torch.equal(loaded.model.state_dict()[k], rec.state[k]) for k in rec.state)
    assert loaded.objective.to_dict()["kind"] == "ddpm" and loaded.space.resolution == 8
    converted = convert(out, tmp_path / "r.safetensors")
    assert all(torch.equal(dico.load_checkpoint(converted)[k], rec.state[k]) for k in rec.state)
    from dico.pipelines import load_pipeline

    pipe = load_pipeline(out)  # with the class names the snapshots carry
    assert pipe.get_label_ids(["3"]) == [3]
    assert all(torch.equal(pipe.transformer.state_dict()[k], rec.state[k]) for k in rec.state)
    assert torch.load(out, weights_only=True)["phema"]["sigma_rel"] == 0.07
    assert cli(["sample", "--ckpt", str(out), "--out", str(tmp_path / "s.png"), "--num-samples", "2", "--steps", "2",
                "--threads", "1"]) == 0


def test_reconstruct_command_and_its_errors(run, tmp_path, capsys):
    results, _ = run
    out = tmp_path / "r.pt"
    assert cli(["ema", "reconstruct", str(results), "--sigma-rel", "0.07", "--step", "3", "--inputs", "0.1",
                "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "from 3 snapshots" in said and "3@0.1" in said and "@0.05" not in said
    assert torch.load(out, weights_only=True)["phema"]["step"] == 3
    for args, message in ((["--sigma-rel", "0.07", "--out", str(out)], "already exists"),
                          (["--sigma-rel", "0.5", "--out", str(tmp_path / "x.pt")], "sigma-rel"),
                          (["--sigma-rel", "0.07", "--step", "9", "--out", str(tmp_path / "x.pt")], "newest"),
                          (["--sigma-rel", "0.07", "--inputs", "0.2", "--out", str(tmp_path / "x.pt")], "no snapshots")):
        try:  # values the options refuse stop while the flags are read; the others when the run starts
            code = cli(["ema", "reconstruct", str(results), *args])
        except SystemExit as stop:
            code = stop.code
        assert code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.pt").exists()


def test_sweep_evaluates_each_profile_and_the_baselines(run, tmp_path, capsys):
    results, _ = run
    table = tmp_path / "sweep.json"
    assert cli(["ema", "sweep", str(results), "--sigma-rels", "0.03,0.2", "--num-samples", "20", "--steps", "2",
                "--batch-size", "20", "--threads", "1", "--json", str(table)]) == 0
    rows = json.loads(table.read_text())
    assert [r["weights"] for r in rows] == ["phema 0.03", "phema 0.2", "EMA (--ema-decay)", "raw weights"]
    assert all(r["features"] == "digits" and r["fid"] > 0 and r["step"] == 4 for r in rows)
    assert "| phema 0.03 | 4 |" in capsys.readouterr().out


# Side by side with EDM2's own code ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def edm2():
    """EDM2's training/phema.py, imported by path (it imports torch_utils and dnnlib from its checkout)."""
    root = os.environ.get("EDM2_PATH")
    if not root:
        pytest.skip("set EDM2_PATH to an NVlabs/edm2 checkout")
    sys.path.insert(0, root)
    try:
        spec = importlib.util.spec_from_file_location("edm2_phema", os.path.join(root, "training", "phema.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(root)
    return module


@pytest.mark.parametrize("batch", [1, 64, 2048])
def test_beta_per_step_matches_edm2(edm2, batch):
    for sigma in (0.01, 0.05, 0.1, 0.25):
        for step in (1, 2, 3, 10, 777, 100_000):
            theirs = float(edm2.power_function_beta(std=sigma, t_next=step * batch, t_delta=batch))
            assert abs(power_beta(sigma, step) - theirs) < 1e-6
    assert np.allclose(gamma_of(np.array([0.01, 0.05, 0.1, 0.25])),
                       edm2.std_to_exp(np.array([0.01, 0.05, 0.1, 0.25])), rtol=0, atol=1e-6)


@pytest.mark.parametrize("stds,every,last,batch,out", [
    ((0.05, 0.1), 100, 3000, 64, (0.01, 0.05, 0.07, 0.2, 0.25)),
    ((0.05, 0.1), 4096, 409_600, 2048, (0.02, 0.1, 0.15)),
    ((0.03, 0.08, 0.2), 250, 2750, 256, (0.05, 0.12)),
])
def test_reconstruction_coefficients_match_edm2(edm2, stds, every, last, batch, out):
    steps = snapshot_steps(0, last, every)
    in_steps = [s for s in steps for _ in stds]
    in_sigma = [r for _ in steps for r in stds]
    for at in (steps[-1], steps[len(steps) // 2]):
        keep = [i for i, s in enumerate(in_steps) if s <= at]
        ours = reconstruction_coefficients([in_steps[i] for i in keep], [in_sigma[i] for i in keep], at, out)
        theirs = edm2.solve_posthoc_coefficients([in_steps[i] * batch for i in keep], [in_sigma[i] for i in keep],
                                                 at * batch, out)
        assert np.abs(ours - theirs).max() < 1e-6
