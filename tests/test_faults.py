"""Faults: interruption at injected points, damaged and crafted files, non-finite numbers, bad data and bad input.

Every case states what is guaranteed: nothing done is lost, nothing wrong is written silently, and the user gets a
clear message instead of a traceback.
"""

import json
import os
import signal
import socket
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
from helpers import TINY, child_process, tiny_run_config

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
    log = tmp_path / "log.jsonl"
    with child_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}) as proc:
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
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o644  # written through mkstemp (0600 alone)


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
        with pytest.raises(ValueError, match=r"--cfg-scale \(guidance_scale\) must be a finite number >= 0, got"):
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
    with pytest.raises(ValueError, match="other settings; pass --overwrite to replace it"):
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
    ("sample --ckpt {ckpt} --cfg-scale -1 --out {tmp}/x.png", "--cfg-scale (guidance_scale) must be a finite number"),
    ("sample --ckpt {ckpt} --seed -1 --out {tmp}/x.png", "--seed must be an integer in [0, 2**64), got -1"),
    ("sample --ckpt {ckpt} --steps 2.5 --out {tmp}/x.png", "--steps"),
    ("sample --ckpt {ckpt} --classes 1.5 --out {tmp}/x.png", "--classes"),
    # Existing outputs are never replaced without --overwrite; paths under a file and foreign folders are refused.
    ("sample --ckpt {ckpt} --steps 2 --out {tmp}/old.png", "old.png already exists; pass --overwrite to replace it"),
    ("sample --ckpt {ckpt} --steps 2 --out {tmp}/old.npz", "old.npz already exists; pass --overwrite to replace it"),
    ("convert {ckpt} {tmp}/old.safetensors", "old.safetensors already exists; pass --overwrite to replace it"),
    ("convert {ckpt} {file}/x.safetensors", "x.safetensors: " + "{file} is a file, not a folder"),
    ("convert {ckpt} {tmp}/pipe --format diffusers", "pipe already exists; pass --overwrite to replace it"),
    ("convert {ckpt} {tmp}/foreign --format diffusers --overwrite", "not a dico pipeline); dico never writes into it"),
    ("convert {ckpt} {file} --format diffusers", "a-file is a file, not a folder"),
    ("export-data digits --out {tmp}/old.npz", "old.npz already exists; pass --overwrite to replace it"),
    ("export-data digits --out {file}/d.npz", "d.npz: " + "{file} is a file, not a folder"),
    ("evaluate {ckpt} {ckpt} --json {tmp}/old.json", "old.json already exists; pass --overwrite to replace it"),
    ("bench --models DiCo-Tiny --json {tmp}/old.json", "old.json already exists; pass --overwrite to replace it"),
    ("bench --models DiCo-Tiny --json {file}/b.json", "b.json: " + "{file} is a file, not a folder"),
    ("bench --cfg-scale nan", "--cfg-scale must be a finite number >= 0, got nan"),
    ("bench --steps 0", "--steps (sample_steps) must be an integer >= 1, got 0"),
]


def existing_outputs(work: Path) -> None:
    """Outputs a rerun could replace: files of each kind, a pipeline folder of ours and a folder of the user's."""
    for name in ("old.png", "old.npz", "old.safetensors", "old.json"):
        (work / name).write_bytes(b"the user's " + name.encode())
    (work / "pipe").mkdir()
    (work / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": ["dico_pipeline", "DiCoPipeline"]}))
    (work / "foreign").mkdir()
    (work / "foreign" / "notes.txt").write_text("mine")


def snapshot(folder: Path) -> dict:
    """Every path under `folder` with its bytes and modification time (None for folders)."""
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("line,named", BAD_INPUTS, ids=[line.split(" {")[0] for line, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line_and_writes_nothing(line, named, tiny_checkpoint, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    blocker = work / "a-file"
    blocker.write_bytes(b"")
    existing_outputs(work)
    args = line.format(tmp=work, file=blocker, ckpt=tiny_checkpoint).split()
    before = snapshot(work)
    try:
        code = cli(args)
    except SystemExit as stop:  # the flag parser's own errors (wrong type, unknown choice)
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert named.format(file=blocker) in one_line(err) and "Traceback" not in err
    assert snapshot(work) == before  # nothing written, nothing changed, nothing left


def one_line(err: str) -> str:
    """The message with the flag parser's box (which wraps long lines) taken away."""
    return " ".join(err.replace("│", " ").split())



# --- failures the user can fix (no network, a damaged folder, a method the model lacks): one line, exit 2 ----------

USER_FIXABLE = [
    ("evaluate {images} {images}", "--inception-weights FILE"),
    ("convert {ckpt} {tmp}/pipe --format diffusers --push-to-hub someone/dico", "needs network access"),
    ("convert {no_weights} {tmp}/again --format diffusers", "diffusion_pytorch_model.safetensors: no such file"),
    ("convert {wrong_size} {tmp}/again --format diffusers", "config.json does not fit its weights"),
    ("sample --ckpt {flow} --method ddim --out {tmp}/x.png", "--sampler ode takes euler, midpoint"),
    ("sample --ckpt {flow} --sampler sde --method rk4 --out {tmp}/x.png", "--sampler sde takes Euler, Heun"),
]


@pytest.mark.parametrize("line,named", USER_FIXABLE, ids=[line.split(" {")[0] for line, _ in USER_FIXABLE])
def test_failures_the_user_can_fix_are_one_line_and_never_called_unexpected(line, named, tiny_checkpoint, tmp_path,
                                                                            capsys, monkeypatch):
    import huggingface_hub

    from dico.evaluation import inception
    from dico.objectives import FlowObjective
    from dico.pipelines import save_pipeline

    with socket.socket() as s:  # a port nothing listens on: every download and upload is refused, as offline
        s.bind(("127.0.0.1", 0))
        offline = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(inception, "INCEPTION_WEIGHTS_URL", f"{offline}/{inception.INCEPTION_WEIGHTS_FILENAME}")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached Inception weights
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", offline)
    images = tmp_path / "images.npz"
    np.savez(images, arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    folders = {}
    if "{no_weights}" in line or "{wrong_size}" in line:
        folders["no_weights"] = save_pipeline(tiny_checkpoint, tmp_path / "no-weights")
        (folders["no_weights"] / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
        folders["wrong_size"] = save_pipeline(tiny_checkpoint, tmp_path / "wrong-size")
        config = folders["wrong_size"] / "transformer" / "config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "hidden_size": 32}))
    flow = tmp_path / "flow.pt"
    atomic_save({**torch.load(tiny_checkpoint, weights_only=True), "objective": FlowObjective().to_dict()}, flow)
    code = cli(line.format(tmp=tmp_path, ckpt=tiny_checkpoint, images=images, flow=flow, **folders).split())
    err = capsys.readouterr().err
    assert code == 2, err
    command = line.split()[0]
    assert err.splitlines()[-1].startswith(f"dico {command}: error: ") and named in err.splitlines()[-1], err
    assert sum("error" in row for row in err.splitlines()) == 1 and "unexpected" not in err, err
    assert "Traceback" not in err and not (tmp_path / "x.png").exists()


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
    parts = tmp_path / "s.npz.parts"
    with child_process([sys.executable, "-m", "dico.cli", "sample", "--ckpt", str(tiny_checkpoint), "--steps", "1000",
                        "--num-samples", "64", "--batch-size", "8", "--out", str(tmp_path / "s.npz")],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}) as proc:
        deadline = time.time() + 120
        while not (parts / "settings.json").exists() and time.time() < deadline:  # sampling has begun
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "dico sample: interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "s.npz").exists()  # no half file; finished shards stay for the rerun


# --- one check per sampling value: the same message from the flags, DiCoPipeline and the Python sampling calls -----

NAN, INF = float("nan"), float("inf")
SAME_MESSAGE = [  # (flags or None where the flag parser refuses first, pipeline keywords, SamplingOptions keywords)
    (["--cfg-scale", "nan"], {"guidance_scale": NAN}, {"cfg_scale": NAN},
     "--cfg-scale (guidance_scale) must be a finite number >= 0, got nan"),
    (["--cfg-scale", "inf"], {"guidance_scale": INF}, {"cfg_scale": INF},
     "--cfg-scale (guidance_scale) must be a finite number >= 0, got inf"),
    (["--cfg-scale", "-1"], {"guidance_scale": -1.0}, {"cfg_scale": -1.0},
     "--cfg-scale (guidance_scale) must be a finite number >= 0, got -1.0"),
    (["--steps", "0"], {"num_inference_steps": 0}, {"steps": 0},
     "--steps (num_inference_steps) must be an integer >= 1, got 0"),
    (None, {"num_inference_steps": 2.5}, {"steps": 2.5}, "--steps (num_inference_steps) must be an integer >= 1, got 2.5"),
    (None, {"num_inference_steps": 2.0}, {"steps": 2.0}, "--steps (num_inference_steps) must be an integer >= 1, got 2.0"),
    (["--seed", "-1"], {"seed": -1}, {"seed": -1}, "--seed must be an integer in [0, 2**64), got -1"),
    (["--seed", str(2**64)], {"seed": 2**64}, {"seed": 2**64},
     f"--seed must be an integer in [0, 2**64), got {2**64}"),
    (["--guidance-channels", "0"], {"guidance_channels": 0}, {"guidance_channels": 0},
     "--guidance-channels must be an integer >= 1 or 'all', got 0"),
]


@pytest.mark.parametrize("flags,pipe_kwargs,option_kwargs,message", SAME_MESSAGE,
                         ids=[m.split(" must")[0] + " " + m.split("got ")[-1] for *_, m in SAME_MESSAGE])
def test_a_bad_sampling_value_gets_the_same_message_wherever_it_enters(flags, pipe_kwargs, option_kwargs, message,
                                                                        tiny_checkpoint, tmp_path, capsys):
    from dico.pipelines import load_pipeline

    if flags is not None:
        with pytest.raises(SystemExit) as stop:  # checked while the flags are read
            cli(["sample", "--ckpt", str(tiny_checkpoint), *flags, "--out", str(tmp_path / "x.png")])
        assert stop.value.code == 2 and message in one_line(capsys.readouterr().err)
    pipe = load_pipeline(tiny_checkpoint)
    with pytest.raises(ValueError) as refused:
        pipe([1], **{"num_inference_steps": 2, "seed": 0, "output_type": "np", **pipe_kwargs})
    assert str(refused.value) == message
    with pytest.raises(ValueError) as refused:
        SamplingOptions(**option_kwargs)
    assert str(refused.value) == message
    options = SamplingOptions(steps=2)  # changed after it was checked: sampling checks again
    for name, value in option_kwargs.items():
        setattr(options, name, value)
    model = load_pretrained(tiny_checkpoint).model
    with pytest.raises(ValueError) as refused:
        generate(model, OutputSpace(8, 1), [0], [1], options)
    assert str(refused.value) == message
    assert not list(tmp_path.glob("x.png"))


@pytest.mark.parametrize("labels", [[1.5], [1.9], [1.0], [True], [10], [-1], torch.tensor([1.5]), torch.tensor([2.0]),
                                    np.array([1.9]), torch.tensor([3, 10])],
                         ids=lambda v: f"{type(v).__name__}{v.tolist() if hasattr(v, 'tolist') else v}")
def test_class_labels_must_be_integer_ids_in_range_everywhere(labels, tiny_checkpoint, tmp_path):
    # 1.5 and 1.9 once became class 1 silently; now the pipeline, generate and class_labels refuse them alike.
    from dico.conditioning import class_labels
    from dico.pipelines import load_pipeline

    model = load_pretrained(tiny_checkpoint).model
    messages = set()
    for call in (lambda: load_pipeline(tiny_checkpoint)(labels, num_inference_steps=2, seed=0, output_type="np"),
                 lambda: generate(model, OutputSpace(8, 1), [0], labels, SamplingOptions(steps=2)),
                 lambda: class_labels(labels, model)):
        with pytest.raises(ValueError) as refused:
            call()
        messages.add(str(refused.value))
    assert len(messages) == 1
    message = messages.pop()
    assert message.startswith("--classes (class_labels) must be integer class ids in [0, 10), got ")
    shown = message.split("got ")[-1]
    assert shown in {"1.5", "1.9", "1.0", "2.0", "True", "10", "-1"}


def test_integer_scalars_of_numpy_and_torch_are_accepted(tiny_checkpoint):
    from dico.pipelines import load_pipeline

    pipe = load_pipeline(tiny_checkpoint)
    plain = pipe([1, 2], num_inference_steps=2, seed=3, guidance_scale=1.5, output_type="np").images
    scalars = pipe(torch.tensor([1, 2]), num_inference_steps=np.int64(2), seed=np.uint64(3),
                   guidance_scale=np.float32(1.5), output_type="np").images
    np.testing.assert_array_equal(plain, scalars)


def test_the_pipeline_refuses_non_finite_custom_sigmas(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from dico.pipelines import DiCoPipeline, as_component

    spec = model_spec("DiCo-Tiny", in_channels=1, num_classes=10, **TINY)
    pipe = DiCoPipeline(as_component(build_model(spec)).eval(), FlowMatchEulerDiscreteScheduler(), sample_size=8,
                        objective={"kind": "flow", "path": "Linear", "prediction": "velocity"})
    with pytest.raises(ValueError, match=r"sigmas must be one or more finite numbers >= 0, got \[1.0, nan\]"):
        pipe([1], sigmas=[1.0, NAN], seed=0)


# --- outputs: refused without --overwrite, replaced whole with it, never mixed, never in a folder not ours ---------

def test_convert_replaces_an_existing_file_only_with_overwrite(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"the user's file")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="w.safetensors already exists; pass --overwrite to replace it"):
        convert(tiny_checkpoint, out)
    assert cli(["convert", str(tiny_checkpoint), str(out)]) == 2
    assert capsys.readouterr().err == f"dico convert: error: {out} already exists; pass --overwrite to replace it\n"
    assert snapshot(tmp_path) == before
    assert cli(["convert", str(tiny_checkpoint), str(out), "--overwrite"]) == 0
    assert load_pretrained(out).space == OutputSpace(8, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000010.pt", "w.safetensors"]  # no partial file left


def test_a_pipeline_folder_is_swapped_whole_and_a_foreign_folder_never_written(tiny_checkpoint, tmp_path, capsys):
    from dico.pipelines import DiCoPipeline, save_pipeline

    out = tmp_path / "pipe"
    save_pipeline(tiny_checkpoint, out)
    (out / "left-over.txt").write_text("from an older conversion")
    before = snapshot(tmp_path)
    assert cli(["convert", str(tiny_checkpoint), str(out), "--format", "diffusers"]) == 2
    assert "pipe already exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
    assert cli(["convert", str(tiny_checkpoint), str(out), "--format", "diffusers", "--overwrite"]) == 0
    assert not (out / "left-over.txt").exists()  # the new folder replaced the old one whole: nothing mixed in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000010.pt", "pipe"]  # no partial or old folder left
    DiCoPipeline.from_pretrained(str(out))

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    before = snapshot(foreign)
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="not a dico pipeline.*never writes into it"):
            save_pipeline(tiny_checkpoint, foreign, overwrite=overwrite)
    assert snapshot(foreign) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (save_pipeline(tiny_checkpoint, empty) / "model_index.json").is_file()  # an empty folder is filled


@pytest.mark.parametrize("when", ["while writing", "at the swap"])
def test_an_interrupted_replacement_leaves_the_old_folder_whole(when, tiny_checkpoint, tmp_path, monkeypatch):
    import dico.cache
    import dico.pipelines.export
    from dico.pipelines import save_pipeline

    out = tmp_path / "pipe"
    save_pipeline(tiny_checkpoint, out)
    before = snapshot(out)
    if when == "while writing":  # the weights are written beside the old folder, then Ctrl-C
        def interrupted(*args, **kwargs):
            assert any(p.name.endswith(".partial") for p in tmp_path.iterdir())
            raise KeyboardInterrupt
        monkeypatch.setattr(dico.pipelines.export, "model_card", interrupted)
    else:  # the old folder is moved aside, then Ctrl-C before the new one is renamed in
        real_replace = os.replace

        def replace(src, dst):
            if Path(src).name.endswith(".partial"):
                raise KeyboardInterrupt
            return real_replace(src, dst)
        monkeypatch.setattr(dico.cache.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save_pipeline(tiny_checkpoint, out, overwrite=True)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000010.pt", "pipe"]


def test_export_data_and_sample_replace_only_with_overwrite(tiny_checkpoint, tmp_path, capsys):
    npz = tmp_path / "digits.npz"
    npz.write_bytes(b"the user's file")
    assert cli(["export-data", "digits", "--out", str(npz)]) == 2
    assert npz.read_bytes() == b"the user's file"
    assert cli(["export-data", "digits", "--out", str(npz), "--overwrite"]) == 0
    assert np.load(npz)["arr_0"].shape[1:] == (8, 8, 3)
    png = tmp_path / "grid.png"
    png.write_bytes(b"the user's picture")
    sample = ["sample", "--ckpt", str(tiny_checkpoint), "--steps", "2", "--num-samples", "2", "--out", str(png)]
    assert cli(sample) == 2 and png.read_bytes() == b"the user's picture"
    assert cli(sample + ["--overwrite"]) == 0 and Image.open(png).size[0] > 8
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000010.pt", "digits.npz", "grid.png"]
