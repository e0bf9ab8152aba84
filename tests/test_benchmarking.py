"""Efficiency figures: our MAC counter reproduces the paper's params / GFLOPs columns, and the benchmark runs every
task side by side."""

import math
import os

import pytest
import torch
import torch.nn as nn

from dico.benchmarking import PAPER_COSTS, BenchConfig, MacCounter, benchmark, count, format_table, model_cost
from dico.benchmarking.official import official_twin
from dico.cli import main
from dico.models import create_model


@pytest.mark.parametrize("name,image_size", sorted(PAPER_COSTS), ids=lambda v: str(v))
def test_counts_match_paper(name, image_size):
    paper_params, paper_gmacs = PAPER_COSTS[(name, image_size)]
    cost = model_cost(name, image_size)
    if name.startswith("DiT"):
        assert round(cost.params / 1e6) == round(paper_params)  # the paper gives DiT-XL/2 as "675M"
    else:
        assert round(cost.params / 1e6, 1) == paper_params
    assert abs(cost.macs / 1e9 - paper_gmacs) / paper_gmacs < 0.01


def test_params_match_official_shapes_file():
    import json
    from pathlib import Path

    shapes = json.loads((Path(__file__).parents[1] / "../shared/fixtures/official_state_dict_shapes.json").read_text())
    for size in ("DiCo-S", "DiCo-XL"):
        assert model_cost(size).params == shapes[f"{size}:params"]


def test_counter_follows_the_convention_on_hand_counted_ops():
    # conv 3x3 (4->6, groups 2) on 5x7, linear 6->3 on 2 rows, elementwise mul, layer norm, mean.
    x = torch.randn(1, 4, 5, 7)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    lin = nn.Linear(6, 3)
    with torch.no_grad(), MacCounter() as counter:
        h = conv(x)
        lin(torch.randn(2, 6))
        h = h * h
        nn.functional.layer_norm(h, (7,))
        h.mean(dim=(2, 3))
    expected = {"convolution": 6 * 5 * 7 * 2 * 9, "addmm": 2 * 6 * 3, "mul": 6 * 35, "native_layer_norm": 6 * 35,
                "mean": 6}
    assert counter.by_op == expected


def test_meta_count_equals_count_on_real_tensors():
    model = create_model("DiCo-S", num_classes=10)
    assert count(model, (2, 4, 8, 8)) == count(model, (2, 4, 8, 8), device="cpu")
    # On meta tensors attention runs as its math decomposition, whose scaling multiplies add a few MACs.
    model = create_model("DiT-S/2", num_classes=10, input_size=8)
    (p_meta, meta), (p_cpu, cpu) = count(model, (2, 4, 8, 8)), count(model, (2, 4, 8, 8), device="cpu")
    assert p_meta == p_cpu and cpu <= meta < cpu * 1.001


def test_dit_attention_is_counted():
    # DiT-S/2 on a 16x16 latent: 64 tokens, hidden 384; per block QK^T + AV = 2 * 64 * 64 * 384.
    per_block = 2 * 64 * 64 * 384
    _, macs = count(create_model("DiT-S/2", input_size=16), (1, 4, 16, 16), device="cpu")
    model = create_model("DiT-S/2", input_size=16).eval()
    with torch.no_grad(), MacCounter() as counter:
        model(torch.zeros(1, 4, 16, 16), torch.zeros(1), torch.zeros(1).long())
    attention = sum(v for k, v in counter.by_op.items() if "attention" in k or k == "bmm")
    assert attention == 12 * per_block
    assert macs == counter.total


def test_count_rejects_bad_shapes():
    with pytest.raises(ValueError, match="N, C, H, W"):
        count(create_model("DiCo-S"), (4, 32, 32))
    with pytest.raises(ValueError, match="multiple of 32"):
        model_cost("DiCo-S", 100)


def test_benchmark_runs_every_task_side_by_side():
    config = BenchConfig(models=["DiCo-S", "DiT-S/2"], tasks=["forward", "sample"], batch_sizes=[2],
                         dtypes=["fp32", "bf16"], image_size=32, repeats=2, warmup=1, sample_steps=2, num_classes=10)
    results = benchmark(config)
    # A training step, cheap: one model, no warm-up, so the memory estimate comes from the timed call.
    results += benchmark(BenchConfig(models=["DiCo-S"], tasks=["train"], batch_sizes=[2], image_size=32,
                                     repeats=1, warmup=0, num_classes=10))
    assert len(results) == 2 * 2 * 2 + 1
    for r in results:
        assert all(s > 0 for s in r.seconds) and len(r.seconds) == (1 if r.task == "train" else 2)
        assert r.images_per_second == pytest.approx(2 / r.median_seconds)
        assert r.peak_memory_bytes >= 0
    table = format_table(results)
    assert table.count("\n") == len(results) + 1 and "| sample | DiT-S/2 | ours | 2 | bf16 |" in table
    assert "| train | DiCo-S | ours | 2 | fp32 |" in table


def test_benchmark_validates_its_config():
    for bad, match in ((dict(models=["DiCo-Q"]), "unknown model"), (dict(tasks=["fly"]), "task"),
                       (dict(dtypes=["fp16"]), "dtype"), (dict(dtypes=["tf32"]), "tf32"),
                       (dict(batch_sizes=[0]), "batch"), (dict(image_size=100), "multiple of 32"),
                       (dict(device="tpu"), "device")):
        with pytest.raises(ValueError, match=match):
            benchmark(BenchConfig(**bad))


def test_official_twin_needs_a_checkout(tmp_path):
    with pytest.raises(FileNotFoundError, match="shallowdream204/DiCo"):
        official_twin(create_model("DiCo-S"), tmp_path)


@pytest.mark.skipif(not os.environ.get("DICO_OFFICIAL"), reason="set DICO_OFFICIAL to a shallowdream204/DiCo checkout")
def test_official_twin_computes_the_same_function():
    model = create_model("DiCo-S", num_classes=10).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    twin = official_twin(model, os.environ["DICO_OFFICIAL"]).eval()
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([10.0, 900.0]), torch.tensor([3, 10])
    with torch.no_grad():
        ours, theirs = model(x, t, y), twin(x, t, y)
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-5


def test_cli_info_and_bench(capsys):
    assert main(["info", "DiCo-S", "DiT-XL/2"]) == 0
    out = capsys.readouterr().out
    assert "| DiCo-S | 256 | 33.1 | 4.25 | 33.1 | 4.25 |" in out and "| DiT-XL/2 | 256 | 675.1 | 118.69 |" in out
    assert main(["info", "DiCo-XL", "--image-size", "512"]) == 0
    assert "| DiCo-XL | 512 | 701.2 | 348.33 |" in capsys.readouterr().out
    assert main(["bench", "--models", "DiCo-S", "--batch-sizes", "1", "--image-size", "32", "--repeats", "1",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| forward | DiCo-S | ours | 1 | fp32 | cpu |" in out and "glibc malloc tuning" in out
    assert main(["bench", "--models", "DiCo-Z"]) == 2
    assert "unknown model" in capsys.readouterr().err
