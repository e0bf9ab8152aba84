"""Faults: interruption at injected points, damaged and crafted files, non-finite numbers, bad data and bad input.

Every case states what is guaranteed: nothing done is lost, nothing wrong is written silently, and the user gets a
clear message instead of a traceback.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dico
from dico.checkpoints import CheckpointError, atomic_save, convert, load_pretrained, read_checkpoint
from dico.cli import main as cli
from dico.data import ImageFolderDataset, scan_image_folder
from dico.images import read_rgb
from dico.models import build_model, model_spec
from dico.objectives import DDPMObjective
from dico.sampling import OutputSpace, SamplingOptions, generate, sample_to_npz
from dico.training import NonFiniteError, TrainingInterrupted, newest_checkpoint, train
from helpers import TINY, tiny_run_config

run_config = tiny_run_config


def state(path, which="model"):
    return dico.load_checkpoint(path, weights=which)


def assert_same_weights(a, b):
    for which in ("model", "ema"):
        x, y = state(a, which), state(b, which)
        assert all(torch.equal(x[k], y[k]) for k in x), which


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    results = tmp_path_factory.mktemp("uninterrupted")
    return train(run_config(results), progress=False, write_grid=False)


def fire_on_call(monkeypatch, cls, method, call, action):
    """Run `action` at the `call`-th call of cls.method (1-based), then the method itself."""
    original = getattr(cls, method)
    calls = {"n": 0}

    def wrapped(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            action()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, wrapped)


# --- interruption ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_the_optimizer_step_saves_that_step_and_resumes_exactly(signum, uninterrupted, tmp_path,
                                                                                 monkeypatch):
    # The signal arrives while step 3's update runs: the run completes the step, saves step 3 and stops.
    fire_on_call(monkeypatch, torch.optim.AdamW, "step", 3, lambda: os.kill(os.getpid(), signum))
    with pytest.raises(TrainingInterrupted, match=f"{signal.Signals(signum).name} after step 3") as stop:
        train(run_config(tmp_path), progress=False, write_grid=False)
    assert stop.value.checkpoint.name == "0000003.pt"
    assert torch.load(stop.value.checkpoint, weights_only=True)["opt"]["state"][0]["step"] == 3  # agrees with "step"
    monkeypatch.undo()
    resumed = train(run_config(tmp_path), resume="auto", progress=False, write_grid=False)
    assert_same_weights(resumed, uninterrupted)


def test_a_hard_stop_inside_the_optimizer_step_saves_nothing_inconsistent(uninterrupted, tmp_path, monkeypatch):
    # A second Ctrl-C (KeyboardInterrupt) inside step 3's update: no state is consistent then, so nothing is saved
    # beyond the periodic checkpoint of step 2, and resuming from it gives the uninterrupted weights.
    def hard_stop():
        raise KeyboardInterrupt

    fire_on_call(monkeypatch, torch.optim.AdamW, "step", 3, hard_stop)
    with pytest.raises(KeyboardInterrupt):
        train(run_config(tmp_path), progress=False, write_grid=False)
    assert newest_checkpoint(tmp_path).name == "0000002.pt"
    monkeypatch.undo()
    assert_same_weights(train(run_config(tmp_path), resume="auto", progress=False, write_grid=False), uninterrupted)


def test_an_error_between_steps_saves_an_emergency_checkpoint(uninterrupted, tmp_path, monkeypatch):
    from dico.data import DigitsDataset

    def truncated_image():
        raise OSError("image file is truncated")

    # Step 4's batch (items 25..32 of 8-image steps) fails to load after step 3 completed (ckpt_every 2 saved 2).
    fire_on_call(monkeypatch, DigitsDataset, "__getitem__", 25, truncated_image)
    with pytest.raises(OSError, match="truncated"):
        train(run_config(tmp_path), progress=False, write_grid=False)
    assert newest_checkpoint(tmp_path).name == "0000003.pt"
    monkeypatch.undo()
    assert_same_weights(train(run_config(tmp_path), resume="auto", progress=False, write_grid=False), uninterrupted)


def test_sigterm_to_the_command_saves_and_exits_with_a_message(tmp_path):
    cmd = [sys.executable, "-m", "dico.cli", "train", "--model-options", json.dumps(TINY), "--results-dir",
           str(tmp_path), "--max-steps", "100000", "--global-batch", "8", "--ckpt-every", "100000", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = tmp_path / "log.jsonl"
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().strip()) and time.time() < deadline:  # training has begun
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    saved = newest_checkpoint(tmp_path)
    assert saved is not None and f"saved {saved}" in err


def test_stale_temporary_parts_are_removed_and_checkpoints_honour_the_umask(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    stale = checkpoints / ".0000002.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    old = os.umask(0o022)
    try:
        final = train(run_config(tmp_path, max_steps=2), progress=False, write_grid=False)
    finally:
        os.umask(old)
    assert not stale.exists()
    assert final.stat().st_mode & 0o777 == 0o644


def test_a_failed_start_leaves_nothing_behind(tmp_path):
    results = tmp_path / "run"
    with pytest.raises(ValueError, match="unknown model"):
        train(run_config(results, model="DiCo-Nope"), progress=False)
    with pytest.raises(ValueError, match="not divisible"):
        train(run_config(results, global_batch=8, micro_batch=3), progress=False)
    assert not results.exists()


# --- numbers ---------------------------------------------------------------------------------------------------

def test_a_diverging_run_stops_naming_the_step_and_never_saves_non_finite_weights(tmp_path):
    with pytest.raises(NonFiniteError, match=r"step \d+"):
        train(run_config(tmp_path, lr=1e6, max_steps=20, ckpt_every=1), progress=False, write_grid=False)
    for path in (tmp_path / "checkpoints").glob("*.pt"):
        ckpt = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in {**ckpt["model"], **ckpt["ema"]}.values()), path.name


def test_bad_steps_can_be_skipped_up_to_a_bound(tmp_path, monkeypatch):
    original = torch.Tensor.backward
    calls = {"n": 0}

    def poison_second_step(self, *args, **kwargs):
        calls["n"] += 1
        original(self, *args, **kwargs)
        if calls["n"] == 2:  # make step 2's gradients NaN
            for p in model_params[0]:
                if p.grad is not None:
                    p.grad.fill_(float("nan"))

    model_params = []
    real_adamw = dico.training.loop.adamw

    def remember(params, **kw):
        params = list(params)
        model_params.append(params)
        return real_adamw(params, **kw)

    monkeypatch.setattr(dico.training.loop, "adamw", remember)
    monkeypatch.setattr(torch.Tensor, "backward", poison_second_step)
    final = train(run_config(tmp_path, skip_nonfinite=1), progress=False, write_grid=False)
    ckpt = torch.load(final, weights_only=True)
    assert ckpt["step"] == 4 and ckpt["skipped_steps"] == 1
    assert ckpt["opt"]["state"][0]["step"] == 3  # three updates applied, one skipped


def test_sampling_refuses_non_finite_settings_and_reports_non_finite_outputs():
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="--cfg-scale must be a finite number"):
            SamplingOptions(cfg_scale=bad)
    for field, value in (("steps", 0), ("batch_size", 0), ("cache_interval", 0), ("guidance_channels", -1),
                         ("cache_depth", 3), ("eta", -1.0), ("sampler", "heun"), ("shift", 0.0)):
        with pytest.raises(ValueError, match="--" + field.replace("_", "-")):
            SamplingOptions(**{field: value})
    model = build_model(model_spec("DiCo-Tiny", in_channels=1, num_classes=10, **TINY)).eval()
    with torch.no_grad():
        model.final_layer.out_proj.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        generate(model, OutputSpace(8, 1), [0, 1], torch.tensor([1, 2]), SamplingOptions(steps=2))


# --- files -----------------------------------------------------------------------------------------------------

@pytest.fixture
def tiny_checkpoint(tmp_path):
    spec = model_spec("DiCo-Tiny", in_channels=1, num_classes=10, **TINY)
    torch.manual_seed(0)
    model = build_model(spec)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path / "0000010.pt"
    atomic_save({"format": "dico-train/1", "model": model.state_dict(), "ema": model.state_dict(), "spec": spec,
                 "space": {"resolution": 8, "channels": 1, "vae": None, "latent_scale": 0.18215}, "step": 10}, path)
    return path


def flip_a_byte_of_member(path: Path, out: Path, suffix: str) -> str:
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    name_len, extra_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    data[info.header_offset + 30 + name_len + extra_len + 1] ^= 0x40
    out.write_bytes(bytes(data))
    return info.filename


def test_a_bit_flip_is_caught_and_the_damaged_tensor_named(tiny_checkpoint, tmp_path):
    flip_a_byte_of_member(tiny_checkpoint, tmp_path / "flipped.pt", "/data/0")
    with pytest.raises(CheckpointError, match="'x_embedder.proj.weight'.*CRC-32"):
        read_checkpoint(tmp_path / "flipped.pt")
    st = convert(tiny_checkpoint, tmp_path / "w.safetensors")
    data = bytearray(st.read_bytes())
    data[-7] ^= 0x01  # the last tensor's bytes
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged: tensor"):
        load_pretrained(tmp_path / "flipped.safetensors")


def test_empty_random_and_missing_files_get_their_own_messages(tmp_path, monkeypatch):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\)"):
        read_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "random.pt")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    with pytest.raises(FileNotFoundError, match="no such file: results/checkpoints/0003000.pt"):
        read_checkpoint("results/checkpoints/0003000.pt")  # looks like owner/repo/file, but is a local path


CRAFTED_MEMORY = textwrap.dedent("""
    import resource, sys, torch
    from dico.checkpoints import CheckpointError, load_pretrained
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        load_pretrained(sys.argv[1])
    except CheckpointError as err:
        print("REFUSED", str(err).splitlines()[0])
    print("GROWTH_MB", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
""")


@pytest.mark.parametrize("kind", [".pt", ".safetensors"])
def test_a_crafted_spec_cannot_make_us_allocate_its_network(kind, tiny_checkpoint, tmp_path):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["spec"]["config"]["hidden_size"] = 2048  # about 21 GB of weights, against 0.1 MB in the file
    crafted = tmp_path / "crafted.pt"
    torch.save(ckpt, crafted)
    if kind == ".safetensors":
        from safetensors.torch import save_file

        save_file(ckpt["ema"], str(tmp_path / "crafted.safetensors"),
                  metadata={"dico_spec": json.dumps(ckpt["spec"]), "dico_space": json.dumps(ckpt["space"])})
        crafted = tmp_path / "crafted.safetensors"
    done = subprocess.run([sys.executable, "-c", CRAFTED_MEMORY, str(crafted)], capture_output=True, text=True,
                          timeout=300)
    assert "REFUSED" in done.stdout and "does not fit" in done.stdout, done.stdout + done.stderr
    growth = float(done.stdout.split("GROWTH_MB")[1])
    assert growth < 200, growth


def test_a_crafted_depth_is_refused_before_building(tiny_checkpoint, tmp_path):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["spec"]["config"]["depth"] = [10 ** 7, 1, 1, 1, 1]
    torch.save(ckpt, tmp_path / "deep.pt")
    with pytest.raises(CheckpointError, match="claims depth"):
        load_pretrained(tmp_path / "deep.pt")


def test_converted_files_carry_what_sampling_needs(tiny_checkpoint, tmp_path, capsys):
    st = convert(tiny_checkpoint, tmp_path / "w.safetensors")
    loaded = load_pretrained(st)
    assert loaded.space == OutputSpace(8, 1) and loaded.objective == DDPMObjective()
    assert cli(["sample", "--ckpt", str(st), "--steps", "2", "--num-samples", "2", "--out",
                str(tmp_path / "g.png")]) == 0


def test_sampling_runs_bind_to_the_weights_and_never_overwrite_a_finished_file(tiny_checkpoint, tmp_path, capsys):
    model = load_pretrained(tiny_checkpoint).model
    options = SamplingOptions(steps=2, batch_size=2)
    out = tmp_path / "s.npz"
    sample_to_npz(model, OutputSpace(8, 1), out, 3, options, progress=False)
    first = out.read_bytes()
    assert sample_to_npz(model, OutputSpace(8, 1), out, 3, options, progress=True) == out  # same run: complete
    assert "already complete" in capsys.readouterr().out
    with pytest.raises(ValueError, match="other settings.*never overwritten"):
        sample_to_npz(model, OutputSpace(8, 1), out, 3, SamplingOptions(steps=3, batch_size=2), progress=False)
    assert out.read_bytes() == first
    # An unfinished run (its manifest says which weights) resumed with other weights, e.g. another checkpoint
    # file at the same path, is refused.
    unfinished = tmp_path / "r.npz.parts"
    unfinished.mkdir()
    (unfinished / "settings.json").write_text(str(np.load(out)["dico_settings"]))
    other = build_model(model_spec("DiCo-Tiny", in_channels=1, num_classes=10, **TINY)).eval()
    with pytest.raises(ValueError, match="unfinished run with other settings"):
        sample_to_npz(other, OutputSpace(8, 1), tmp_path / "r.npz", 3, options, progress=False)
    assert sample_to_npz(model, OutputSpace(8, 1), tmp_path / "r.npz", 3, options, progress=False).exists()


def test_cuda_without_a_gpu_is_a_clear_error(tiny_checkpoint, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert cli(["sample", "--ckpt", str(tiny_checkpoint), "--device", "cuda", "--out", str(tmp_path / "x.png")]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err


# --- data ------------------------------------------------------------------------------------------------------

def test_symlink_loops_and_second_links_count_no_image_twice(tmp_path):
    root = tmp_path / "folder"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / cls / f"{i}.png")
    (root / "a" / "loop").symlink_to(root / "a")          # a loop
    (root / "b" / "also_a").symlink_to(root / "a")        # the same images again, under another class
    os.symlink(root / "a" / "0.png", root / "b" / "dup.png")
    paths, labels, classes = scan_image_folder(root)
    assert len(paths) == 6 and labels.tolist() == [0, 0, 0, 1, 1, 1] and classes == ["a", "b"]


def test_every_image_mode_is_read_faithfully_or_refused_by_name(tmp_path):
    grey16 = np.full((8, 8), 32896, np.uint16)  # 50% grey in 16 bits: 32896 / 257 = 128
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    assert np.asarray(read_rgb(tmp_path / "g16.png")).max() == 128  # not saturated to 255
    Image.new("P", (8, 8), 3).save(tmp_path / "p.png")
    Image.new("LA", (8, 8), (77, 0)).save(tmp_path / "la.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    assert np.asarray(read_rgb(tmp_path / "la.png"))[0, 0].tolist() == [77, 77, 77]
    assert np.asarray(read_rgb(tmp_path / "rgba.png"))[0, 0].tolist() == [10, 20, 30]  # alpha dropped
    assert np.asarray(read_rgb(tmp_path / "p.png")).shape == (8, 8, 3)
    Image.fromarray(np.zeros((8, 8), np.float32), "F").save(tmp_path / "f.tiff")
    with pytest.raises(ValueError, match="f.tiff.*mode 'F'"):
        read_rgb(tmp_path / "f.tiff")
    folder = tmp_path / "flat"
    folder.mkdir()
    Image.fromarray(grey16).save(folder / "g16.png")
    x, _ = ImageFolderDataset(folder, image_size=8, flip=False)[0]
    assert abs(float(x.mean()) - (128 / 255 - 0.5) / 0.5) < 1e-6


# --- bad input, command by command: exit 2, a message naming the flag, no traceback, nothing written --------------

BAD_INPUTS = [
    ("train --max-steps 0", "--max-steps"),
    ("train --global-batch 0", "--global-batch"),
    ("train --ckpt-every 0", "--ckpt-every"),
    ("train --ckpt-every -1", "--ckpt-every"),
    ("train --ema-decay 2", "--ema-decay"),
    ("train --betas 0.9", "--betas"),
    ("train --warmup-steps -1", "--warmup-steps"),
    ("train --lr nan", "--lr"),
    ("train --micro-batch 3 --global-batch 8", "not divisible"),
    ("train --precision fp16", "--precision"),
    ("train --model DiCo-Nope", "unknown model"),
    ("train --model-options {{bad", "--model-options"),
    ("train --results-dir {file}", "--results-dir"),
    ("train --resume {tmp}/nope.pt", "no such checkpoint"),
    ("train --data {tmp}/nope", "no such directory"),
    ("train --threads 0", "--threads"),
    ("train --threads many", "--threads"),
    ("sample --ckpt {ckpt} --num-samples 0 --out {tmp}/x.png", "--num-samples"),
    ("sample --ckpt {ckpt} --batch-size 0 --out {tmp}/x.png", "--batch-size"),
    ("sample --ckpt {ckpt} --cfg-scale nan --out {tmp}/x.png", "--cfg-scale"),
    ("sample --ckpt {ckpt} --cfg-scale inf --out {tmp}/x.png", "--cfg-scale"),
    ("sample --ckpt {ckpt} --guidance-channels -1 --out {tmp}/x.png", "--guidance-channels"),
    ("sample --ckpt {ckpt} --cache-interval 0 --out {tmp}/x.png", "--cache-interval"),
    ("sample --ckpt {ckpt} --steps 0 --out {tmp}/x.png", "--steps"),
    ("sample --ckpt {ckpt} --out {tmp}/x.jpg", "--out"),
    ("sample --ckpt {ckpt} --out {file}/x.png", "--out"),
    ("sample --ckpt {ckpt} --classes 12 --out {tmp}/x.png", "--classes"),
    ("sample --ckpt {ckpt} --method euler --out {tmp}/x.png", "method"),
    ("sample --ckpt {tmp}/nope.pt --out {tmp}/x.png", "no such file"),
    ("sample --ckpt {file} --out {tmp}/x.png", "empty"),
    ("sample --ckpt {ckpt} --device cuda:7 --out {tmp}/x.png", "--device"),
    ("sample --ckpt {ckpt} --threads 0 --out {tmp}/x.png", "--threads"),
    ("evaluate {tmp}/nope.npz {tmp}/nope2.npz", "nope"),
    ("evaluate {tmp}/nope.npz {tmp}/nope2.npz --threads -1", "--threads"),
    ("extract-latents --data {tmp} --out {tmp}/lat --threads 0", "--threads"),
    ("info DiCo-Nope", "unknown model"),
    ("bench --models DiCo-Nope", "unknown model"),
    ("bench --batch-sizes 0", "batch"),
    ("bench --threads 0", "--threads"),
    ("convert {tmp}/nope.pt {tmp}/out.safetensors", "no such file"),
    ("convert {ckpt} {tmp}/out.bin", ".safetensors"),
    ("export-data digits --out {tmp}", "--out"),
    ("demo --ckpt {ckpt} --port 0", "--port"),
]


@pytest.mark.parametrize("line,named", BAD_INPUTS, ids=[line.split(" {")[0] for line, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line_and_writes_nothing(line, named, tiny_checkpoint, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    blocker = work / "a-file"
    blocker.write_bytes(b"")
    args = line.format(tmp=work, file=blocker, ckpt=tiny_checkpoint).split()
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    try:
        code = cli(args)
    except SystemExit as stop:  # the flag parser's own errors (wrong type, unknown choice)
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert named in err and "Traceback" not in err
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before  # nothing written, nothing left


def test_a_full_disk_is_one_line_and_leaves_no_partial_checkpoint(tmp_path):
    # The file-size limit makes every write past 64 KiB fail as a full disk would (EFBIG instead of ENOSPC).
    limit = textwrap.dedent("""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
        from dico.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    results = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", limit, "train", "--model-options", json.dumps(TINY), "--results-dir",
                           str(results), "--max-steps", "2", "--global-batch", "8", "--no-progress"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    assert "dico train: error: could not write" in done.stderr and "disk full" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list((results / "checkpoints").glob("*")), "a partial checkpoint was left behind"


def test_ctrl_c_in_sample_is_one_line(tiny_checkpoint, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "dico.cli", "sample", "--ckpt", str(tiny_checkpoint), "--steps",
                             "1000", "--num-samples", "64", "--batch-size", "8", "--out", str(tmp_path / "s.npz")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    parts = tmp_path / "s.npz.parts"
    deadline = time.time() + 120
    while not (parts / "settings.json").exists() and time.time() < deadline:  # sampling has begun
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "dico sample: interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "s.npz").exists()  # no half file; finished shards stay for the rerun
