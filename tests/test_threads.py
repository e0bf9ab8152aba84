"""CPU threads on a shared machine (dico.threads): the auto policy driven by made-up /proc readings, the --threads
flag of each command."""

import os
import sys

import pytest
import torch
import yaml

from dico.cli import main, parse
from dico.threads import OtherLoad, ThreadPolicy, check_threads, cpu_ticks, free_cores, own_ticks, torch_default_threads

LINUX = sys.platform.startswith("linux")


class FakeProc:
    """/proc/stat and /proc/self/stat of a made-up machine whose counters advance as the test says, and its clock."""

    def __init__(self, cores: int):
        self.ticks = [[0] * 8 for _ in range(cores)]  # user nice system idle iowait irq softirq steal, per core
        self.own = 0  # this process's utime + stime
        self.now = 0.0
        self.reads = 0

    def advance(self, seconds: float, busy_cores: float = 0.0, own_cores: float = 0.0, hz: int = 100):
        """`seconds` pass; other processes keep `busy_cores` cores busy and this one `own_cores` (fractions spread
        over the first cores)."""
        self.now += seconds
        per_core = round(seconds * hz)
        load = busy_cores + own_cores
        for core in self.ticks:
            used = round(min(max(load, 0.0), 1.0) * per_core)
            load -= 1
            core[0] += used  # user
            core[3] += per_core - used  # idle
        self.own += round(own_cores * per_core)

    def stat(self) -> str:
        self.reads += 1
        total = [sum(column) for column in zip(*self.ticks)]
        lines = [f"cpu  {' '.join(map(str, total))} 0 0"]
        lines += [f"cpu{i} {' '.join(map(str, core))} 0 0" for i, core in enumerate(self.ticks)]
        return "\n".join(lines + ["intr 12 0 0", "ctxt 345", "btime 1700000000"]) + "\n"

    def self_stat(self) -> str:
        fields = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(self.own), "0", "0", "0", "20", "0",
                  "3", "0", "1000", "1000", "50"]
        return "4242 (python (a) b) " + " ".join(fields) + "\n"

    def load(self, cores=None, **options) -> OtherLoad:
        return OtherLoad(cores if cores is not None else range(len(self.ticks)), read_stat=self.stat,
                         read_self=self.self_stat, clock=lambda: self.now, **options)


@pytest.fixture
def torch_threads():
    """Torch's thread count as it was, restored after the test."""
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------- reading /proc
def test_proc_readings_count_busy_ticks_of_the_chosen_cores_and_this_processs_own():
    proc = FakeProc(4)
    proc.advance(1.0, busy_cores=1.5)
    proc.ticks[3][4] += 7  # iowait: waiting, not working
    busy, total = cpu_ticks(proc.stat(), {0, 1, 3})
    assert (busy, total) == (150, 307)
    assert cpu_ticks(proc.stat(), {1}) == (50, 100)
    proc.advance(1.0, own_cores=0.5)
    assert own_ticks(proc.self_stat()) == 50  # the command name "python (a) b" holds spaces and parentheses


@pytest.mark.skipif(not LINUX, reason="/proc is Linux's")
def test_the_real_proc_files_parse():
    cores = os.sched_getaffinity(0)
    with open("/proc/stat") as f:
        busy, total = cpu_ticks(f.read(), cores)
    assert 0 < busy < total
    sum(i * i for i in range(300_000))  # some CPU time of our own
    with open("/proc/self/stat") as f:
        assert own_ticks(f.read()) > 0
    assert OtherLoad(cores)() is None  # no measurement before its first interval has passed


# ------------------------------------------------------------------------------------------ the policy
def test_free_cores_is_what_others_leave_within_one_and_torchs_default():
    assert free_cores(4, 0.0, 8) == 4  # an idle machine: all cores
    assert free_cores(4, 1.0, 8) == 3  # one other busy core: one fewer
    assert free_cores(2, 0.67, 8) == 1  # a busy loop beside our 2 threads gets 2/3 of a core
    assert free_cores(2, 0.3, 8) == 2  # noise
    assert free_cores(4, 4.0, 8) == free_cores(4, 9.0, 8) == 1  # never below 1
    assert free_cores(64, 0.0, 8) == 8  # never above torch's default


def test_other_load_measures_others_not_this_process():
    proc = FakeProc(4)
    load = proc.load()
    proc.advance(2.0, busy_cores=1.0, own_cores=2.0)
    assert load() == pytest.approx(1.0)


def test_other_load_remeasures_only_after_its_interval_and_smooths():
    proc = FakeProc(2)
    load = proc.load(interval=2.0, first_interval=0.25, smoothing=0.5)
    proc.advance(0.125, busy_cores=2.0)
    assert load() is None  # too early for a first measurement
    proc.advance(0.25, busy_cores=2.0)
    assert load() == pytest.approx(2.0)  # the first one, after 0.25 s: both cores busy all along
    reads = proc.reads
    proc.advance(1.0)
    assert load() == pytest.approx(2.0) and proc.reads == reads  # within 2 s: the last value, /proc not read
    proc.advance(1.0)
    assert load() == pytest.approx(1.0)  # idle for 2 s: halfway from 2 to 0
    proc.advance(2.0)
    assert load() == pytest.approx(0.5)
    proc.advance(2.0, busy_cores=1.0)
    assert load() == pytest.approx(0.75)


def test_auto_follows_the_load_and_restores_torchs_count(torch_threads):
    ceiling = torch_default_threads()
    proc = FakeProc(ceiling + 2)
    load = proc.load()
    with ThreadPolicy("auto", "cpu", load=load) as cpu_threads:
        assert cpu_threads() == ceiling  # before the first measurement: torch's default
        proc.advance(0.5)
        assert cpu_threads() == ceiling == torch.get_num_threads()  # idle, more cores than torch's default
        proc.advance(2.0, busy_cores=ceiling + 1.6)
        assert cpu_threads() == free_cores(ceiling + 2, load.busy, ceiling) == torch.get_num_threads()
        for _ in range(8):
            proc.advance(2.0, busy_cores=ceiling + 2)
            cpu_threads()
        assert torch.get_num_threads() == 1  # every core busy with others' work: one thread
    assert torch.get_num_threads() == torch_threads


def test_a_fixed_count_none_and_gpus(torch_threads, monkeypatch):
    with ThreadPolicy(3) as cpu_threads:
        assert torch.get_num_threads() == 3 and cpu_threads() == 3
    assert torch.get_num_threads() == torch_threads
    proc = FakeProc(4)
    proc.advance(1.0, busy_cores=4)
    for policy in (ThreadPolicy(None), ThreadPolicy("auto", "cuda:0", load=proc.load()),
                   ThreadPolicy("auto", torch.device("cuda"), load=proc.load())):
        torch.set_num_threads(3)
        with policy:
            proc.advance(3.0, busy_cores=4)
            assert policy() == 3  # left alone
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice wins over auto
    with ThreadPolicy("auto", "cpu", load=proc.load()) as cpu_threads:
        proc.advance(3.0, busy_cores=4)
        assert cpu_threads() == 3


def test_sampling_runs_at_the_policys_count(torch_threads, tmp_path):
    from dico.models import build_model, model_spec
    from dico.sampling import OutputSpace, SamplingOptions, sample_to_npz

    model = build_model(model_spec("DiCo-Tiny", in_channels=1, num_classes=10, hidden_size=16,
                                   depth=[1, 1, 1, 1, 1])).eval()
    seen = []
    model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    torch.set_num_threads(3)
    sample_to_npz(model, OutputSpace(resolution=8, channels=1), tmp_path / "s.npz", 4,
                  SamplingOptions(steps=2, batch_size=2), progress=False, threads=1)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 3


# --------------------------------------------------------------------------------------------- the flag
def test_thread_counts_are_integers_from_one_or_auto():
    for good in (1, 7, "auto"):
        check_threads(good)
    for bad in (0, -1, "2", "many", 1.5, True, None):
        with pytest.raises(ValueError, match=r"^--threads must be an integer >= 1 or auto, got "):
            check_threads(bad)
    check_threads(None, none_ok=True)


REQUIRED = {"train": [], "sample": ["--ckpt", "c.pt", "--out", "s.png"], "evaluate": ["ref.npz", "s.npz"],
            "extract-latents": ["--data", "imgs", "--out", "lat"]}


@pytest.mark.parametrize("command", REQUIRED)
def test_each_command_takes_threads(command, capsys):
    assert parse(command, REQUIRED[command])[0].threads == "auto"
    assert parse(command, [*REQUIRED[command], "--threads", "1"])[0].threads == 1
    assert main([command, *REQUIRED[command], "--threads", "2", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["threads"] == 2
    with pytest.raises(SystemExit) as done:
        parse(command, [*REQUIRED[command], "--threads", "0"])
    assert done.value.code == 2


def test_a_bad_count_in_a_config_file_is_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("threads: 0\n")
    assert main(["train", "--config", str(config), "--results-dir", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == "dico train: error: --threads must be an integer >= 1 or auto, got 0\n"
    assert not (tmp_path / "r").exists()


def test_bench_says_thread_in_the_singular_and_refuses_zero(capsys):
    assert main(["bench", "--models", "DiCo-S", "--batch-sizes", "1", "--image-size", "32", "--repeats", "1",
                 "--warmup", "0", "--threads", "1", "--quiet"]) == 0
    assert ", 1 thread, clock" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        parse("bench", ["--threads", "0"])
    assert done.value.code == 2
    assert "--threads must be an integer >= 1 or None, got 0" in capsys.readouterr().err
