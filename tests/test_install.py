"""How dico installs: a plain install holds what training, sampling and evaluation need, the web demo and the test
tools are extras, every install line names the distribution, and a part whose extra is missing says which one to
install in one line. "Missing" is a real failed import in a child process (a meta path finder that refuses the
package, as an interpreter without it would), not a stand-in for dico's code."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dico
from dico.cli import COMMANDS
from dico.extras import DISTRIBUTION, install_line

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path(dico.__file__).parent
EXTRA_ONLY = {"gradio", "gradio-client", "playwright", "pytest", "pytest-timeout", "timm"}
# Prepended to each child's code: every finder of modules is wrapped so that it finds none of BLOCKED, so importing
# one fails, and importlib.util.find_spec answers None, as they do where the package is not installed.
BLOCKER = textwrap.dedent("""\
    import sys

    class NotInstalled:
        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                return None
            return self.finder.find_spec(name, path, target)

        def __getattr__(self, name):
            return getattr(self.finder, name)

    sys.meta_path[:] = [NotInstalled(finder) for finder in sys.meta_path]
    """)


def without(blocked: set, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where the top-level packages in `blocked` cannot be imported."""
    env = dict(os.environ, PYTHONPATH=str(SOURCE.parent), COLUMNS="200")
    program = f"BLOCKED = {sorted(blocked)!r}\n{BLOCKER}\n{textwrap.dedent(code)}"
    return subprocess.run([sys.executable, "-c", program], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def dico_command(args: list) -> str:
    return f"from dico.cli import main\nsys.exit(main({args!r}))\n"


def requirement_name(requirement: str) -> str:
    """The normalised project name of a requirement string ("gradio_client>=1" -> gradio-client)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group()).lower()


@pytest.fixture(scope="module")
def project() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


# ---------------------------------------------------------------------------------------------- the requirements
def test_a_plain_install_leaves_out_the_demo_and_the_test_tools(project):
    core = {requirement_name(r) for r in project["dependencies"]}
    assert core & EXTRA_ONLY == set()
    assert {"torch", "torchvision", "diffusers", "torch-fidelity", "torchdiffeq", "tyro"} <= core


def test_the_dev_extra_holds_the_demo_so_the_demo_tests_run(project):
    extras = {name: {requirement_name(r) for r in requirements}
              for name, requirements in project["optional-dependencies"].items()}
    assert extras["demo"] == {"gradio", "gradio-client"}
    assert extras["demo"] | {"pytest", "playwright"} <= extras["dev"]


def test_the_distribution_name_is_ours_and_the_command_stays_dico(project):
    assert project["name"] == DISTRIBUTION != "dico"  # `dico` on the package index is another project
    assert project["scripts"] == {"dico": "dico.cli:main"}


def install_lines() -> list:
    """(file, the rest of the line after `pip install`) for every install line of the docs and the package."""
    files = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "Makefile", *sorted((ROOT / "docs").rglob("*.md")),
             *sorted(p for p in SOURCE.rglob("*") if p.suffix in (".py", ".md"))]
    return [(path.relative_to(ROOT), rest) for path in files if path.exists()
            for rest in re.findall(r"pip install ([^`\n]*)", path.read_text())]


def test_every_install_line_names_the_distribution_and_an_extra_it_has(project):
    lines = install_lines()
    assert any(path.name == "model_card.md" for path, _ in lines)  # the card a converted pipeline carries
    wrong = []
    for path, rest in lines:
        for word in rest.partition(" #")[0].split():
            # a requirement, quoted or not: its name and extras (options and URLs name no dico)
            name, extras = re.match(r"['\"]*([A-Za-z0-9._-]*)(?:\[([\w,-]+)\])?", word).groups()
            if name.lower().startswith("dico") and name != DISTRIBUTION:
                wrong.append(f"{path}: pip install {rest}")
            if name in (DISTRIBUTION, ".") and extras:
                wrong += [f"{path}: no extra {extra!r}" for extra in extras.split(",")
                          if extra not in project["optional-dependencies"]]
    assert wrong == []


# ---------------------------------------------------------------------------------------- without the extras
def test_dico_demo_without_gradio_names_the_extra_in_one_line(tmp_path):
    done = without({"gradio", "gradio_client"}, dico_command(["demo", "--ckpt", "model.pt"]), tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"dico demo: error: the web demo needs gradio: {install_line('demo')}"]
    assert install_line("demo") == "pip install 'dico-diffusion[demo]'"
    assert list(tmp_path.iterdir()) == []


def test_every_command_starts_without_the_extras(tmp_path):
    runs = [["--help"], *([name, "--help"] for name in COMMANDS), ["info", "DiCo-S"]]
    done = without(EXTRA_ONLY | {"gradio_client"}, f"""
        from dico.cli import main
        for args in {runs!r}:
            try:
                code = main(args)
            except SystemExit as done:  # --help of a command
                code = done.code
            print("exit", code, *args, file=sys.stderr)
        """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("exit ")] == [
        f"exit 0 {' '.join(args)}" for args in runs]
    assert "DiCo-S" in done.stdout and "usage: dico demo" in done.stdout


def test_the_library_works_without_the_extras_and_a_timm_encoder_names_its_extra(tmp_path):
    done = without(EXTRA_ONLY | {"gradio_client"}, """
        import dico
        from dico.evaluation import inception
        from dico.pipelines import DiCoPipeline
        from dico.repa.encoders import load_encoder
        from dico.training import preset
        print(dico.create_model("DiCo-Tiny").__class__.__name__, "gradio" in sys.modules)
        try:
            load_encoder("timm:vit_small_patch14_dinov2.lvd142m")
        except ImportError as err:
            print(type(err).__name__, err)
        """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "DiCo False",
        f"MissingExtra the encoder timm:vit_small_patch14_dinov2.lvd142m needs timm: {install_line('timm')}"]
