"""The model as standard tools see it: the CPU fast paths must not hide it from FlopCounterMode, torch.compile
(fullgraph) or DDP."""

import os
import sys
import textwrap

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dico.models import DiCo, create_model
from helpers import run_child


def random_model(**kwargs):
    torch.manual_seed(0)
    model = DiCo(**{"hidden_size": 16, "depth": [1, 1, 1, 1, 1], "num_classes": 10, **kwargs})
    with torch.no_grad():  # non-zero adaLN and output layers, so every path contributes (and has gradients)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.1)
    return model


def inputs(n=2, size=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, size, size, generator=g), torch.rand(n, generator=g) * 999, torch.tensor([3, 10])[:n]


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_flop_counter_counts_the_same_with_and_without_autograd(autocast):
    model = create_model("DiCo-S", num_classes=10).eval()
    x, t, y = inputs(n=1, size=16)

    def flops(grad):
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            with FlopCounterMode(display=False) as counter:
                model(x, t, y)
        return counter.get_total_flops()

    inference, training = flops(False), flops(True)
    assert training > 0 and abs(inference - training) / training < 0.01
    # Convolutions dominate: one 16x16 DiCo-S forward is about 4.24 GMACs per 32x32 latent, so ~1.06 here.
    assert 0.9e9 < inference / 2 < 1.2e9


def test_compiled_forward_matches_eager_without_graph_breaks():
    model = random_model().eval()
    x, t, y = inputs()
    # fullgraph=True raises at the first graph break. aot_eager traces forward and backward as inductor does,
    # without inductor's C++ compile (minutes on two cores); `dico bench` measures inductor itself.
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert torch.allclose(compiled(x, t, y), model(x, t, y), rtol=1e-5, atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, ref = compiled(x, t, y), model(x, t, y)
    assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), ref.float(), rtol=1e-2, atol=1e-2)


def test_compiled_training_step_matches_eager_without_graph_breaks():
    model = random_model().train()
    x, t, y = inputs()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")

    def step(fn):
        model.zero_grad()
        torch.manual_seed(2)  # same label dropout
        loss = fn(x, t, y).square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    (loss, grads), (ref_loss, ref_grads) = step(compiled), step(model)
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    for name, grad in grads.items():
        assert torch.allclose(grad, ref_grads[name], rtol=1e-4, atol=1e-6), name


DDP_STEP = textwrap.dedent("""
    import os
    import sys
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from dico.models import create_model

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = create_model("DiCo-Tiny", hidden_size=16, depth=[1, 1, 1, 1, 1], num_classes=10)
    if sys.argv[1] == "plain":  # the negative control: every weight with default (NCHW) strides
        for p in model.parameters():
            p.data = p.data.clone(memory_format=torch.contiguous_format)
    # Parameters whose incoming gradient has other strides than the parameter itself. Autograd re-lays out the
    # gradients of full-kernel convolutions (their NCHW and channels-last memory orders differ) before DDP sees
    # them; any other mismatch reaches DDP's buckets, which copy it and warn.
    mismatched = set()
    for name, p in model.named_parameters():
        full_kernel = p.ndim == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1
        if not full_kernel:
            p.register_hook(lambda g, name=name, p=p: mismatched.add(name) if g.stride() != p.stride() else None)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(dist.get_rank())
    x, target = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 8, 16, 16, generator=g)
    for _ in range(2):
        t, y = torch.rand(2, generator=g) * 999, torch.randint(0, 10, (2,), generator=g)
        torch.nn.functional.mse_loss(ddp(x, t, y), target).backward()
        opt.step()
        opt.zero_grad()
    sys.stdout.write(f"stepped; mismatched: {len(mismatched)}\\n")  # one write: the two ranks share the pipe
    sys.stdout.flush()
    del ddp, opt
    dist.barrier()
    dist.destroy_process_group()
    # What happens after this is interpreter teardown, not what this checks; gloo's threads have now and then aborted
    # it ("terminate called without an active exception"), so leave without running the C++ destructors.
    os._exit(0)
""")


@pytest.mark.parametrize("layout", ["as-built", "plain"])
def test_ddp_takes_gradients_in_the_parameters_layout(tmp_path, layout):
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_STEP)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), layout]
    done = run_child(cmd, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.count("stepped") == 2, done.stderr[-3000:]
    if layout == "as-built":  # no gradient reaches DDP in another layout than its parameter's: no copy, no warning
        assert done.stdout.count("mismatched: 0") == 2, done.stdout
        assert "Grad strides do not match bucket view strides" not in done.stderr, done.stderr[-3000:]
    else:  # the control: with plain strides the 1x1 and depthwise gradients do not match
        assert "mismatched: 0" not in done.stdout, done.stdout
