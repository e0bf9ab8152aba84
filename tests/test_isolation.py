"""The isolation every test runs in (tests/conftest.py): its own working directory, caches and temporary files inside
the session folder, no process left running; and `dico train` checks its options before the results folder, so what
a checkout holds never changes which message a bad option gets."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import conftest
from dico.cli import main as cli
from helpers import child_process, run_child, save_tiny_checkpoint, tiny_run_config

ROOT = Path(__file__).resolve().parents[1]


def inside(path, folder) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


# --- working directory --------------------------------------------------------------------------------------------

def test_each_test_starts_in_an_empty_folder_of_its_own(tmp_path, request):
    assert Path.cwd() == tmp_path and not any(tmp_path.iterdir())
    assert Path.cwd() != Path(request.config.invocation_params.dir) and not inside(Path.cwd(), ROOT)


def test_relative_paths_a_test_writes_land_in_its_own_folder(tmp_path):
    Path("results/checkpoints").mkdir(parents=True)
    assert (tmp_path / "results" / "checkpoints").is_dir()
    assert not inside(Path("results").resolve(), ROOT)


# --- `dico train`: the options first, then the results folder -----------------------------------------------------

def a_run_with_checkpoints(folder: Path) -> Path:
    """A results folder as `make demo` leaves it: checkpoints/0003000.pt."""
    save_tiny_checkpoint(folder / "checkpoints" / "0003000.pt")
    return folder


# The rows of test_faults' bad input that read a checkout's results/ before their own option, with `make demo`'s
# results/ in the working directory, as when the tests ran from the checkout.
CHECKOUT_ROWS = [
    ("train --micro-batch 3 --global-batch 8", "not divisible"),
    ("train --model DiCo-Nope", "unknown model"),
    ("train --data nope", "no such directory"),
]


@pytest.mark.parametrize("line,named", CHECKOUT_ROWS, ids=[line for line, _ in CHECKOUT_ROWS])
def test_a_results_folder_with_checkpoints_does_not_hide_a_bad_option(line, named, tmp_path, capsys):
    results = a_run_with_checkpoints(tmp_path / "results")
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    assert cli(line.split()) == 2
    err = capsys.readouterr().err
    assert named in err and "already holds checkpoints" not in err, err
    assert {p: p.read_bytes() for p in results.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("bad,named", [(dict(model="DiCo-Nope"), "unknown model"),
                                       (dict(micro_batch=3), "not divisible"),
                                       (dict(data="nope"), "no such directory")])
def test_train_checks_its_options_before_the_results_folder(bad, named, tmp_path):
    from dico.training import train

    results = a_run_with_checkpoints(tmp_path / "run")
    with pytest.raises((ValueError, FileNotFoundError), match=named):
        train(tiny_run_config(results, **bad), progress=False, write_grid=False)
    with pytest.raises(ValueError, match="already holds checkpoints"):  # the refusal itself is still there
        train(tiny_run_config(results), progress=False, write_grid=False)


# --- caches and temporary files -----------------------------------------------------------------------------------

def test_caches_and_temporary_files_go_inside_the_session_folder(tmp_path):
    session = conftest.session_folder()
    assert session.name.startswith("dico-tests-") and not inside(session, ROOT)
    for name in conftest.CACHE_VARIABLES:
        assert inside(os.environ[name], session), name
    assert inside(tempfile.gettempdir(), session)
    assert inside(tmp_path, session) or not conftest.OWN_BASETEMP  # pytest's own tmp_path folders too
    from dico.cache import cache_dir

    assert inside(cache_dir(), session)
    # Read once, on import: these modules must first be imported after the session set the variables.
    import diffusers.utils.constants as diffusers
    import huggingface_hub.constants as hub

    assert inside(hub.HF_HUB_CACHE, session) and inside(diffusers.HF_MODULES_CACHE, session)
    client = pytest.importorskip("gradio_client.client")
    assert inside(client.DEFAULT_TEMP_DIR, session)


def test_a_child_process_inherits_the_session_folder():
    code = "import tempfile; from dico.cache import cache_dir; print(tempfile.gettempdir()); print(cache_dir())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    temp, cache = done.stdout.split()
    assert inside(temp, conftest.session_folder()) and inside(cache, conftest.session_folder())


def test_relative_paths_in_the_environment_are_made_absolute(tmp_path):
    environ = {"SIT_PATH": "sit", "PYTHONPATH": os.pathsep.join(["src", "/abs"])}
    conftest.absolute_paths(environ=environ)
    assert environ == {"SIT_PATH": str(tmp_path / "sit"), "PYTHONPATH": os.pathsep.join([str(tmp_path / "src"), "/abs"])}


# --- child processes ----------------------------------------------------------------------------------------------

def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for an init that may never reap it)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_until(condition, seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


# A stand-in for a torchrun worker: a process in a session of its own (so not in its parent's group), that records
# its pid and sleeps; then the parent sleeps too.
SPAWN = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
open(sys.argv[1], "w").write(str(worker.pid))
time.sleep(600)
"""

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")


@needs_proc
def test_a_child_and_the_workers_it_started_are_gone_when_the_block_ends(tmp_path):
    pid_file = tmp_path / "worker.pid"
    with child_process([sys.executable, "-c", SPAWN, str(pid_file)]) as proc:
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text())
        worker = int(pid_file.read_text())
        assert running(proc.pid) and running(worker)
    assert proc.returncode is not None
    assert wait_until(lambda: not running(worker)), f"worker {worker} still running"


@needs_proc
def test_run_child_past_its_timeout_kills_the_workers_too(tmp_path):
    pid_file = tmp_path / "worker.pid"
    with pytest.raises(subprocess.TimeoutExpired):
        run_child([sys.executable, "-c", SPAWN, str(pid_file)], timeout=20)
    worker = int(pid_file.read_text())
    assert wait_until(lambda: not running(worker)), f"worker {worker} still running"


@needs_proc
def test_torchrun_workers_are_gone_when_the_block_ends(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import os, sys, time\nopen(os.path.join(sys.argv[1], str(os.getpid())), 'w').close()\n"
                      "time.sleep(600)\n")
    pids = tmp_path / "pids"
    pids.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(pids)]
    with child_process(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}) as proc:
        assert wait_until(lambda: len(list(pids.iterdir())) == 2), "the workers did not start"
        workers = [int(p.name) for p in pids.iterdir()]
        assert all(running(pid) for pid in workers) and proc.pid not in workers
        assert list(Path(tempfile.gettempdir()).glob("torchelastic_*")), "torchrun's logs are not in the session"
    assert wait_until(lambda: not any(running(pid) for pid in workers)), f"workers {workers} still running"


# --- .ci/leftovers ------------------------------------------------------------------------------------------------

def test_leftovers_lists_what_appeared_since_the_snapshot(tmp_path):
    watched = tmp_path / "watched"
    (watched / "old").mkdir(parents=True)
    (watched / "old" / "kept.txt").write_text("x")
    listing = tmp_path / "before.txt"
    tool = [sys.executable, str(ROOT / ".ci" / "leftovers")]
    subprocess.run([*tool, "snapshot", str(listing), str(watched)], check=True, timeout=60)
    assert subprocess.run([*tool, "compare", str(listing)], capture_output=True, text=True,
                          timeout=60).returncode == 0
    (watched / "new" / "deep").mkdir(parents=True)
    (watched / "new" / "deep" / "a.pt").write_text("x")
    (watched / "old" / "b.txt").write_text("x")
    (watched / "old" / "__pycache__").mkdir()  # Python's own bytecode cache: not a leftover
    done = subprocess.run([*tool, "compare", str(listing)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout.split("\n")[:2] == [f"{watched / 'new'}/ (2 entries)", str(watched / "old" / "b.txt")], done.stdout
