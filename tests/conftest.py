"""Shared test fixtures, and the isolation every test runs in.

A test run writes inside one session folder (created in pytest_configure, removed in pytest_unconfigure) and
nowhere else: every cache and temporary location the libraries use is pointed into it by environment variables,
set before any test module imports torch, huggingface_hub or gradio (some read them once, on import), and child
processes inherit them. Each test runs with its own tmp_path as the working directory. So what a checkout holds
(`results/` from `make demo`, converted folders) or what a user's caches hold never changes an outcome, and a run
leaves nothing behind in /tmp, ~/.cache or the checkout (see .ci/leftovers). Heavy imports stay inside the fixtures
for the same reason: this module is imported before pytest_configure runs.

The official release's tensors live in ../shared/fixtures beside the checkout (helpers.FIXTURES).
"""

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

# Cache and temporary locations, each pointed at its own folder inside the session folder.
CACHE_VARIABLES = {
    "TMPDIR": "tmp",  # tempfile (torchrun's torchelastic_* logs, gradio_client's downloads, /tmp/pytest-of-*)
    "XDG_CACHE_HOME": "cache", "XDG_CONFIG_HOME": "config", "XDG_DATA_HOME": "data",
    "DICO_CACHE_DIR": "cache/dico",  # dico.cache: the Digits-FID classifier, the digits REPA encoder
    "HF_HOME": "huggingface", "HF_MODULES_CACHE": "huggingface/modules",  # custom pipeline code (dico_pipeline.py)
    "HF_HUB_CACHE": "huggingface/hub", "HF_ASSETS_CACHE": "huggingface/assets", "HF_XET_CACHE": "huggingface/xet",
    "GRADIO_TEMP_DIR": "gradio", "MPLCONFIGDIR": "matplotlib", "TORCH_HOME": "torch",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor", "TRITON_CACHE_DIR": "triton", "CUDA_CACHE_PATH": "nv",
}
# Paths a user may set relative to where pytest started; tests change directory, so they are made absolute.
PATH_VARIABLES = ("DICO_OFFICIAL", "SIT_PATH", "REPA_PATH", "DICO_DEMO_CKPT", "DICO_TEST_ARTIFACTS", "EDM2_PATH")
PATH_LIST_VARIABLES = ("PYTHONPATH",)
# Modules that read some of the variables above once, when first imported.
READ_ON_IMPORT = ("torch", "huggingface_hub", "diffusers", "gradio", "gradio_client", "matplotlib", "triton")

SESSION: Path | None = None  # the session folder, while the run lasts
OWN_BASETEMP = True  # pytest's tmp_path folders are inside it (false when the user passed --basetemp)


def session_folder() -> Path:
    if SESSION is None:
        raise RuntimeError("the test session folder exists only between pytest_configure and pytest_unconfigure")
    return SESSION


def absolute_paths(variables=PATH_VARIABLES, lists=PATH_LIST_VARIABLES, environ=os.environ) -> None:
    for name in variables:
        if environ.get(name):
            environ[name] = os.path.abspath(os.path.expanduser(environ[name]))
    for name in lists:
        if environ.get(name):
            environ[name] = os.pathsep.join(os.path.abspath(p) if p else p for p in environ[name].split(os.pathsep))


@pytest.hookimpl(tryfirst=True)  # before pytest's own tmp_path factory reads --basetemp
def pytest_configure(config):
    global SESSION, OWN_BASETEMP
    early = [name for name in READ_ON_IMPORT if name in sys.modules]
    if early:  # a plugin imported them first: their import-time paths would escape the session folder
        raise pytest.UsageError(f"tests/conftest.py: {', '.join(early)} imported before the test session set its "
                                "cache variables; run pytest without the plugin that imports them")
    absolute_paths()
    # Started in the background of a non-interactive shell (`make test &`), a run inherits SIGINT ignored, and so
    # would every command a test starts; the signal tests need what a terminal gives: Python's Ctrl-C handler.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    SESSION = Path(tempfile.mkdtemp(prefix="dico-tests-")).resolve()
    for name, sub in CACHE_VARIABLES.items():
        (SESSION / sub).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(SESSION / sub)
    tempfile.tempdir = None  # gettempdir() caches its answer: ask TMPDIR again
    OWN_BASETEMP = config.option.basetemp is None  # an explicit --basetemp is the user's to keep
    if OWN_BASETEMP:
        config.option.basetemp = str(SESSION / "pytest")


def pytest_unconfigure(config):
    global SESSION
    if SESSION is not None:
        shutil.rmtree(SESSION, ignore_errors=True)
        SESSION = None


@pytest.fixture(scope="session", autouse=True)
def session_working_directory():
    """Module and session fixtures run here: a relative path they write lands inside the session folder."""
    before = os.getcwd()
    work = session_folder() / "work"
    work.mkdir(exist_ok=True)
    os.chdir(work)
    try:
        yield work
    finally:
        os.chdir(before)


@pytest.fixture(autouse=True)
def own_working_directory(tmp_path, monkeypatch):
    """Every test runs in its own tmp_path: a `results/` (or anything else) in the checkout never matters."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def official():
    """Tensors produced by the official DiCo release (see shared/README.md)."""
    import torch
    from helpers import FIXTURES

    path = FIXTURES / "official_tiny.pt"
    if not path.exists():
        pytest.fail(f"official fixtures missing at {path}: CI needs ../shared beside the checkout")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="session")
def official_model(official):
    """The official tiny DiCo with the fixture weights, in eval mode."""
    from dico.models import DiCo

    config = {k: v for k, v in official["config"].items() if k != "input_size"}
    model = DiCo(**config)
    model.load_state_dict(official["state_dict"], strict=True)
    return model.eval()
