"""How many CPU threads torch runs, on a machine that other processes share.

Torch's CPU kernels run on OpenMP threads, one per core by default. Two processes that each run that many threads on
the same cores starve each other: a parallel region ends only when its slowest thread does, and that thread waits
for a core that the other process's threads hold, spinning (OpenMP's default is to busy-wait a while between
regions). On 2 cores the digits demo trains at 8-14 steps/s alone and at 0.4-2.6 beside a second one.

The remedy: `threads="auto"` (the commands' default) runs as many threads as the cores that other processes leave
free: the cores this process may run on less those busy with other work, measured from /proc every INTERVAL_S
seconds and smoothed, at least 1 and at most torch's default. On CUDA, or when OMP_NUM_THREADS is set, it changes
nothing. OpenMP's wait policy is left as it is: OMP_WAIT_POLICY=PASSIVE (idle threads sleep) was measured to halve
the demo's speed alone at 2 threads (8 against 19 steps/s), and one thread, which auto runs beside a busy
neighbour on 2 cores, never waits for another.

A thread count changes the order of float reductions, so runs are bit-identical only at a fixed `threads`.
Torch-free at import (`dico --help` runs the flags' checks): torch is imported where the count is set.
"""

import os
import time
from typing import Callable, Literal

AUTO = "auto"
Threads = int | Literal["auto"]  # a command's --threads
INTERVAL_S = 2.0  # between measurements: long enough to average over scheduling noise, short enough to follow load
FIRST_INTERVAL_S = 0.25  # the first measurement, so that a short command (one sampling call) adapts too
SMOOTHING = 0.5  # weight of the past in the smoothed count of busy cores


def check_threads(value, none_ok: bool = False) -> None:
    """A ValueError unless `value` is an integer >= 1 or "auto" (or None when allowed)."""
    if value is None and none_ok:
        return
    if value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return
    raise ValueError(f"--threads must be an integer >= 1 or auto{' or None' if none_ok else ''}, got {value!r}")


def read_text(path: str) -> Callable[[], str]:
    def read() -> str:
        with open(path) as f:
            return f.read()
    return read


def cpu_ticks(proc_stat: str, cores) -> tuple:
    """(busy, total) clock ticks since boot, summed over `cores`, from the text of /proc/stat. Busy is all but idle
    and iowait; guest time is part of user time already, so it is not added again."""
    busy = total = 0
    for line in proc_stat.splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            user, nice, system, idle, iowait, irq, softirq, steal = ([int(v) for v in values[:8]] + [0] * 8)[:8]
            all_ticks = user + nice + system + idle + iowait + irq + softirq + steal
            busy, total = busy + all_ticks - idle - iowait, total + all_ticks
    return busy, total


def own_ticks(proc_self_stat: str) -> int:
    """This process's user + system clock ticks (all its threads) from the text of /proc/self/stat. Fields are
    counted after the command name, which may hold spaces and parentheses."""
    fields = proc_self_stat[proc_self_stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of proc(5)


class OtherLoad:
    """How many of `cores` other processes keep busy, averaged between readings of /proc/stat (all work on those
    cores) and /proc/self/stat (this process's share of it), re-measured at most every `interval` seconds and
    smoothed. The readers return those files' text and `clock` the time in seconds, so tests can drive it."""

    def __init__(self, cores, read_stat=read_text("/proc/stat"), read_self=read_text("/proc/self/stat"),
                 clock=time.monotonic, interval: float = INTERVAL_S, first_interval: float = FIRST_INTERVAL_S,
                 smoothing: float = SMOOTHING):
        self.cores = frozenset(cores)
        self.read_stat, self.read_self, self.clock = read_stat, read_self, clock
        self.interval, self.first_interval, self.smoothing = interval, first_interval, smoothing
        self.busy = None  # the smoothed count; None until the first measurement
        self.last = self.reading()  # (time, busy ticks, total ticks, own ticks); raises OSError without /proc

    def reading(self) -> tuple:
        return (self.clock(), *cpu_ticks(self.read_stat(), self.cores), own_ticks(self.read_self()))

    def __call__(self) -> float | None:
        """The smoothed number of cores busy with other processes' work (None before the first measurement)."""
        wait = self.interval if self.busy is not None else self.first_interval
        if self.clock() - self.last[0] < wait:
            return self.busy
        now = self.reading()
        busy, total, own = (b - a for a, b in zip(self.last[1:], now[1:]))
        if total > 0:  # the kernel counted ticks since the last reading
            others = max(0, busy - own) / total * len(self.cores)
            self.busy = others if self.busy is None else self.smoothing * self.busy + (1 - self.smoothing) * others
            self.last = now
        return self.busy


def free_cores(cores: int, busy: float, ceiling: int) -> int:
    """Threads for `cores` usable cores of which others keep `busy` busy: the rest, rounded, within [1, ceiling]."""
    return max(1, min(ceiling, round(cores - busy)))


_torch_default = None


def torch_default_threads() -> int:
    """Torch's thread count before dico first changed it: its default (one per physical core, or OMP_NUM_THREADS),
    or what the program set before."""
    global _torch_default
    if _torch_default is None:
        import torch

        _torch_default = torch.get_num_threads()
    return _torch_default


class ThreadPolicy:
    """Torch's CPU thread count as `threads` says, from entering to leaving a `with` block (then it is restored).

    None leaves it alone; an integer sets it; "auto" on a CPU device sets the cores that other processes leave free
    (OtherLoad) each time the policy is called, which is cheap between measurements: call it once per step or batch.
    `load` stands in for the measurement of this process's cores (tests)."""

    def __init__(self, threads: Threads | None = None, device="cpu", load: OtherLoad | None = None):
        check_threads(threads, none_ok=True)
        self.threads, self.load, self.before = threads, None, None
        if threads == AUTO:
            on_cpu = getattr(device, "type", str(device).split(":")[0]) == "cpu"
            if not on_cpu or "OMP_NUM_THREADS" in os.environ:  # a GPU's work, or the user's choice: leave it
                self.threads = None
            else:
                try:
                    self.load = load if load is not None else OtherLoad(os.sched_getaffinity(0))
                except (OSError, AttributeError):  # no /proc or no affinity (not Linux): leave it
                    self.threads = None
        self.ceiling = torch_default_threads() if self.threads == AUTO else None

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        if isinstance(self.threads, int):
            torch.set_num_threads(self.threads)
        self()
        return self

    def __exit__(self, *exc):
        import torch

        if self.before is not None and torch.get_num_threads() != self.before:
            torch.set_num_threads(self.before)

    def __call__(self) -> int:
        """Re-apply the policy (auto: with the newest measurement); the thread count now."""
        import torch

        if self.threads == AUTO:
            busy = self.load()
            wanted = self.ceiling if busy is None else free_cores(len(self.load.cores), busy, self.ceiling)
            if wanted != torch.get_num_threads():
                torch.set_num_threads(wanted)
        return torch.get_num_threads()
