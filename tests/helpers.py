"""Helpers the tests share (imported by test modules and conftest alike)."""

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import torch

# The official release's tensors live in ../shared/fixtures beside the checkout (see shared/README.md).
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# A DiCo-Tiny small enough for a training step in milliseconds, and the demo recipe around it for a few steps.
TINY = {"hidden_size": 16, "depth": [1, 1, 1, 1, 1]}


def tiny_run_config(results, **overrides):
    """The digits demo preset with a tiny model, 4 steps of 8 images, checkpoints every 2 steps."""
    from dico.training import preset

    base = dict(model="DiCo-Tiny", model_overrides=TINY, results_dir=str(results), max_steps=4, global_batch=8,
                log_every=2, ckpt_every=2, num_workers=0, lr=1e-3, ema_decay=0.9, grid_classes=2,
                grid_per_class=2, grid_steps=3)
    return preset("demo", **{**base, **overrides})


def save_tiny_vae(path, latent_channels: int = 4):
    """A real diffusers AutoencoderKL, tiny and with random weights (seeded), saved as a local directory."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, latent_channels=latent_channels,
                        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    vae.save_pretrained(path)
    return path


def save_tiny_checkpoint(path, std: float = 0.0, **entries):
    """A tiny pixel-space digits-like DiCo (8x8 grey, 10 classes) saved as one of our checkpoints, with extra
    `entries`; untrained, or with every weight drawn from N(0, std^2) (seeded) so that labels change the output."""
    from dico.checkpoints import atomic_save
    from dico.models import build_model, model_spec

    spec = model_spec("DiCo-Tiny", in_channels=1, num_classes=10, **TINY)
    network = build_model(spec)
    if std:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in network.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    atomic_save({"ema": network.state_dict(), "model": network.state_dict(), "spec": spec, "step": 1,
                 "space": {"resolution": 8, "channels": 1, "vae": None, "latent_scale": 0.18215}, **entries}, path)
    return path


# --- child processes: started in their own process group, and gone, grandchildren included, when the test ends ----

def descendants(pid: int) -> list:
    """The processes below `pid` (children, their children, ...), read from /proc; [] where there is no /proc."""
    children = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            # /proc/PID/stat: "pid (name) state ppid ..."; the name may hold spaces and parentheses
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_quietly(send, target, sig) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        send(target, sig)


def kill_process_tree(proc: subprocess.Popen) -> None:
    """SIGKILL `proc`, its process group and every process below it, then reap `proc`. torchrun starts each worker
    in a session of its own, so its group alone would leave them running: the tree is frozen first (SIGSTOP, until
    no new process appears), so that none escapes by being re-parented while the others die."""
    frozen = set()
    if proc.returncode is None:  # not reaped yet, so its pid is still its own (running or a zombie)
        _signal_quietly(os.killpg, proc.pid, signal.SIGSTOP)
        frozen.add(proc.pid)
        while new := [pid for pid in descendants(proc.pid) if pid not in frozen]:
            for pid in new:
                _signal_quietly(os.kill, pid, signal.SIGSTOP)
            frozen.update(new)
    for pid in frozen:
        _signal_quietly(os.killpg, pid, signal.SIGKILL)  # a worker's own session, where it leads one
        _signal_quietly(os.kill, pid, signal.SIGKILL)
    _signal_quietly(os.killpg, proc.pid, signal.SIGKILL)  # what is left in its group after it exited
    proc.wait()


@contextlib.contextmanager
def child_process(cmd, **popen_options):
    """`subprocess.Popen(cmd, ...)` in a process group of its own; however the block ends (an assertion, a timeout,
    an interrupt), the child and everything it started are killed before the test goes on."""
    proc = subprocess.Popen(cmd, start_new_session=True, **popen_options)
    try:
        yield proc
    finally:
        kill_process_tree(proc)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def run_child(cmd, timeout: float, **popen_options) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True, timeout=...)` that leaves nothing running: past the
    timeout, or when the child exits leaving processes behind (torchrun's workers), the whole tree is killed."""
    with child_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_options) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            kill_process_tree(proc)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout, out, err) from expired
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

class no_warnings:
    """`with no_warnings():` fails the block on any warning a user would see: Python's (raised as errors where they
    are issued) and those libraries log (diffusers' logger does not propagate to the root one: watched by name)."""

    def __enter__(self):
        import logging
        import warnings

        self.logged = []
        self.watcher = logging.Handler(logging.WARNING)
        self.watcher.emit = self.logged.append
        self.loggers = [logging.getLogger(), logging.getLogger("diffusers")]
        for logger in self.loggers:
            logger.addHandler(self.watcher)
        self.caught = warnings.catch_warnings()
        self.caught.__enter__()
        warnings.simplefilter("error")
        # What Python itself hides from a command's user (warnings addressed to the developers of a library, e.g.
        # numpy 2's DeprecationWarning inside diffusers' DPMSolver) is not a warning on the user's path.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        return self

    def __exit__(self, *error):
        self.caught.__exit__(*error)
        for logger in self.loggers:
            logger.removeHandler(self.watcher)
        if error[0] is None:
            assert not self.logged, [record.getMessage() for record in self.logged]
