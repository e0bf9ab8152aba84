"""`dico bench`: throughput side by side (dico.benchmarking.benchmark), in a process set up as the flags say."""

import json
from dataclasses import asdict

import torch

from ..benchmarking import benchmark, format_table
from ..config import BenchCommand
from ..cpu_allocator import malloc_tuned


def run(command: BenchCommand) -> int:
    if command.threads:
        torch.set_num_threads(command.threads)
    results = benchmark(command, progress=None if command.quiet else lambda msg: print(msg, flush=True))
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} thread{'s' if threads > 1 else ''}, clock {command.clock}, "
          f"glibc malloc tuning {'on' if malloc_tuned() else 'off'}")
    print(format_table(results))
    if command.json:
        with open(command.json, "w") as f:
            json.dump([dict(asdict(r), images_per_second=r.images_per_second) for r in results], f, indent=1)
    return 0
