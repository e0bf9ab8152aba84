"""The `dico` command's glibc malloc settings keep a training step's freed memory in the process."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import resource, torch
    from dico.cpu_allocator import tune_glibc_malloc
    applied = tune_glibc_malloc()
    def step():  # like a training step: activations all alive at once, then all freed
        maps = [torch.ones(5 << 20) for _ in range(8)]  # 8 x 20 MiB
        del maps
    step(); step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def page_faults(**env):
    out = subprocess.run([sys.executable, "-c", SCRIPT], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tuned_malloc_reuses_pages_the_default_gives_back():
    applied, tuned = page_faults(DICO_MALLOC_TUNING="1", GLIBC_TUNABLES="")
    assert applied
    off, default = page_faults(DICO_MALLOC_TUNING="0", GLIBC_TUNABLES="")
    assert not off
    # 5 steps x 160 MiB = 200k pages zero-filled again by default; next to none once tuned
    assert default > 100_000
    assert tuned < default / 100


def test_users_own_glibc_tunables_win():
    applied, _ = page_faults(DICO_MALLOC_TUNING="1", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1048576")
    assert not applied
