"""SIGINT and SIGTERM stop every command the same way at any moment: one line (`dico CMD: interrupted` / `dico CMD:
terminated`), exit 130 / 143, and nothing half-written. A signal that a library swallows ("Exception ignored ...")
is raised again at the next safe point instead of being lost."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dico import interrupts
from dico.cache import atomic_write

# What the `dico` console script runs; `python -m dico.cli` would let CPython 3.11 report a handled Ctrl-C as death
# by SIGINT when the KeyboardInterrupt passed through an exec() of a string (dataclasses, typing), which a shell
# reads as 130 all the same but subprocess does not.
PROGRAM = "import sys\nfrom dico.cli import main\nsys.exit(main())"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def default_signals():
    # A child started from a background job inherits an ignored SIGINT, which dico rightly keeps ignoring.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def dico(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PROGRAM, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=default_signals, **kwargs)


class SwallowsSignals:
    """Delivers a signal to this process inside __del__, where Python prints the KeyboardInterrupt it raises as
    "Exception ignored ..." and carries on: how an import's cleanup lost the Ctrl-C of issue 21."""

    def __init__(self, signum):
        self.signum = signum

    def __del__(self):
        os.kill(os.getpid(), self.signum)
        for _ in range(1000):  # the handler runs at the next bytecode boundary, still inside __del__
            pass


def swallow(signum):
    SwallowsSignals(signum)  # dropped at once: __del__ runs here


def test_the_handlers_are_installed_while_active_and_restored_after():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with interrupts.stop_on_signals():
        assert signal.getsignal(signal.SIGINT) is interrupts._handle
        assert signal.getsignal(signal.SIGTERM) is interrupts._handle
        with pytest.raises(interrupts.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
        assert interrupts.received() == signal.SIGTERM
    assert {s: signal.getsignal(s) for s in before} == before
    assert interrupts.received() is None
    interrupts.stop_if_signalled()  # nothing remembered outside: a no-op


@pytest.mark.parametrize("signum, stop", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, interrupts.Terminated)])
def test_a_swallowed_signal_is_raised_again_and_keeps_the_output_from_being_made_final(signum, stop, tmp_path,
                                                                                     monkeypatch):
    out = tmp_path / "out.bin"
    ignored = []  # what Python prints as "Exception ignored in ..."
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)

    def write(partial):
        partial.write_bytes(b"complete")
        swallow(signum)  # the signal is lost here: the write carries on as if nothing happened

    with interrupts.stop_on_signals():
        with pytest.raises(stop):
            atomic_write(out, write)
    assert [type(u.exc_value) for u in ignored] == [stop]  # it really was swallowed
    assert list(tmp_path.iterdir()) == []  # neither the output nor its partial file


def test_a_signal_during_an_import_is_raised_just_after_it(tmp_path, monkeypatch):
    # Cut short, a module would stay half-built in sys.modules (and torch's C++ cannot unwind through its import).
    (tmp_path / "signalled_while_imported.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\nfor _ in range(10 ** 6):\n    pass\nDONE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with interrupts.stop_on_signals():
        with pytest.raises(KeyboardInterrupt):
            import signalled_while_imported  # noqa: F401
            for _ in range(1000):  # the handler asks for the signal again every DEFER_S seconds
                time.sleep(interrupts.DEFER_S)
    assert sys.modules.pop("signalled_while_imported").DONE  # the import ran to its end


def test_a_signal_ignored_at_start_stays_ignored():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with interrupts.stop_on_signals():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_fake_command(body: str) -> subprocess.CompletedProcess:
    """`dico info` through cli.main in a child process, with the command's run() replaced by `body` (no torch)."""
    script = textwrap.dedent("""
        import dataclasses, os, signal, sys
        sys.path.insert(0, {tests!r})
        import dico.cli as cli
        from test_signals import swallow

        def run(options):
        {body}
            return 0

        cli.COMMANDS["info"] = dataclasses.replace(cli.COMMANDS["info"], module="__main__")
        sys.exit(cli.main())
    """).format(tests=os.path.dirname(__file__), body=textwrap.indent(textwrap.dedent(body), "    "))
    return subprocess.run([sys.executable, "-c", script, "info"], capture_output=True, text=True, env=ENV,
                          preexec_fn=default_signals, timeout=120)


def test_sigterm_stops_a_command_with_one_line_and_143():
    done = run_fake_command("""
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10 ** 7):
            pass
        print("carried on")
    """)
    assert done.returncode == 143, done.stderr
    assert done.stderr == "dico info: terminated\n" and "carried on" not in done.stdout


@pytest.mark.parametrize("signum, line", [(signal.SIGINT, "dico info: interrupted\n"),
                                          (signal.SIGTERM, "dico info: terminated\n")])
def test_a_command_that_lost_a_signal_does_not_report_success(signum, line):
    done = run_fake_command(f"swallow({int(signum)})")
    assert "Exception ignored" in done.stderr
    assert done.returncode == 128 + signum, done.stderr
    assert done.stderr.endswith(line)


def test_an_error_left_by_a_signal_is_reported_as_the_signal():
    # e.g. the RecursionError of a module whose import a Ctrl-C cut short
    done = run_fake_command("""
        swallow(signal.SIGINT)
        raise RecursionError("maximum recursion depth exceeded")
    """)
    assert done.returncode == 130, done.stderr
    assert done.stderr.endswith("dico info: interrupted\n") and "unexpected" not in done.stderr


def test_a_signal_during_start_up_stops_the_command_with_its_line(tmp_path):
    # dico.cli installs the handlers before its own imports; one deferred there is raised as the command starts.
    (tmp_path / "slow_start.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\nfor _ in range(10 ** 6):\n    pass\n")
    script = (f"import sys\nfrom dico.cli import main\nsys.path.insert(0, {str(tmp_path)!r})\nimport slow_start\n"
              "sys.exit(main())")
    done = subprocess.run([sys.executable, "-c", script, "info"], capture_output=True, text=True, env=ENV,
                          preexec_fn=default_signals, timeout=120)
    assert done.returncode == 143, done.stderr
    assert done.stderr == "dico info: terminated\n"


def tree(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_a_signal_at_any_moment_of_a_conversion_finishes_it_or_leaves_nothing(tmp_path):
    from helpers import save_tiny_checkpoint  # torch: not for the children that import this module

    source = save_tiny_checkpoint(tmp_path / "tiny.pt")
    reference = tmp_path / "reference"
    start = time.perf_counter()
    first = dico("convert", source, reference, "--format", "diffusers")
    _, err = first.communicate(timeout=300)
    duration = time.perf_counter() - start
    assert first.returncode == 0, err
    expected = tree(reference)
    outcomes = []
    points = 12
    for signum in (signal.SIGINT, signal.SIGTERM):
        for k in range(points):
            out = tmp_path / f"{signum.name}-{k}"
            delay = duration * (k + 0.5) / points  # the first point falls in dico.cli's own imports
            proc = dico("convert", source, out, "--format", "diffusers")
            time.sleep(delay)
            proc.send_signal(signum)
            stdout, stderr = proc.communicate(timeout=300)
            where = f"{signum.name} after {delay:.2f} s of {duration:.2f} s: exit {proc.returncode}, {stderr!r}"
            if proc.returncode == 0:
                assert tree(out) == expected, where
                outcomes.append("finished")
            else:
                assert proc.returncode == 128 + signum, where
                assert stderr == f"dico convert: {interrupts.message(signum)}\n", where
                assert not out.exists(), where
                outcomes.append("stopped")
            leftovers = {p.name for p in tmp_path.iterdir()} - {"tiny.pt", "reference"} - {
                f"{s.name}-{j}" for s in (signal.SIGINT, signal.SIGTERM) for j in range(points)}
            assert leftovers == set(), f"{where}; left beside the output: {leftovers}"
    assert "stopped" in outcomes  # the sweep really interrupted conversions
