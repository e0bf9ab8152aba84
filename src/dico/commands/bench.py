"""`dico bench`: throughput side by side (dico.benchmarking.benchmark), in a process set up as the flags say."""

import json
from dataclasses import asdict

import torch

from ..benchmarking import benchmark, format_table
from ..cache import atomic_write
from ..config import BenchCommand
from ..cpu_allocator import malloc_tuned
from ..options import check_new_output


def run(command: BenchCommand) -> int:
    if command.json:
        check_new_output(command.json, command.overwrite, "json")  # before the measurement, not after
    if command.threads:
        torch.set_num_threads(command.threads)
    results = benchmark(command, progress=None if command.quiet else lambda msg: print(msg, flush=True))
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} thread{'s' if threads > 1 else ''}, clock {command.clock}, "
          f"glibc malloc tuning {'on' if malloc_tuned() else 'off'}")
    print(format_table(results))
    if command.json:
        rows = [dict(asdict(r), images_per_second=r.images_per_second) for r in results]
        atomic_write(command.json, lambda partial: partial.write_text(json.dumps(rows, indent=1)))
    return 0
