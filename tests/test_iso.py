"""DiCo-Iso, the paper's Table 12: DiCo's block in SiT's isotropic, patchified stack, class-conditional like DiT and
trained with flow matching; SiT-S/2 beside it is DiT-S/2 without the learned variance."""

import pytest
import torch

import dico
from dico.benchmarking import BenchConfig, benchmark, model_cost
from dico.commands import info
from dico.config import InfoConfig, RepaConfig
from dico.repa import RepaLoss, feature_module
from dico.transport import create_transport

SIZES = {"S": (384, 12), "B": (768, 12), "L": (1024, 24), "XL": (1152, 28)}


def tiny(**overrides):
    torch.manual_seed(0)
    return dico.create_model("DiCo-Iso-S/2", hidden_size=32, depth=2, num_classes=10, **overrides)


def block_weights(c: int) -> int:
    """One DiCo block at width c with FFN ratio 4: three c x c convs (two 1x1 and the channel attention's), a 3x3
    depthwise conv, the FFN (c -> 4c -> c) and the six adaLN modulations, with their biases."""
    return 3 * (c * c + c) + (9 * c + c) + (4 * c * c + 4 * c) + (4 * c * c + c) + (6 * c * c + 6 * c)


@pytest.mark.parametrize("size", SIZES)
def test_sizes_are_sits_widths_and_depths_with_dicos_block(size):
    width, depth = SIZES[size]
    with torch.device("meta"):
        model = dico.create_model(f"DiCo-Iso-{size}/2")
        sit = dico.create_model(f"SiT-{size}/2")
    assert model.config["hidden_size"] == sit.config["hidden_size"] == width
    assert len(model.blocks) == len(sit.blocks) == depth
    assert model.patch_size == sit.patch_size == 2
    assert model.learn_sigma is False and sit.learn_sigma is False and model.out_channels == sit.out_channels == 4
    # DiT's embedders and head around the blocks: SiT's parameters minus its blocks and its position table (a frozen
    # parameter), plus DiCo's blocks
    outside = sum(p.numel() for n, p in sit.named_parameters() if not n.startswith(("blocks.", "pos_embed")))
    assert sum(p.numel() for p in model.parameters()) == outside + depth * block_weights(width)


def test_small_model_has_fewer_params_and_macs_than_sit_s2():
    ours, sit = model_cost("DiCo-Iso-S/2"), model_cost("SiT-S/2")
    assert round(sit.params / 1e6, 1) == 33.0 and round(sit.macs / 1e9, 2) == 6.06  # DiT-S/2's, less the sigma head
    assert round(ours.params / 1e6, 1) == 31.1 and round(ours.macs / 1e9, 2) == 4.56
    assert ours.macs < 0.8 * sit.macs


def test_info_shows_dico_iso_beside_sit(capsys):
    assert info.run(InfoConfig(models=["DiCo-Iso-S/2", "SiT-S/2"])) == 0
    rows = [line.split("|")[1:5] for line in capsys.readouterr().out.splitlines()[2:]]
    assert [[cell.strip() for cell in row] for row in rows] == [["DiCo-Iso-S/2", "256", "31.1", "4.56"],
                                                                 ["SiT-S/2", "256", "33.0", "6.06"]]


def test_output_is_zero_at_init_and_takes_any_size_divisible_by_the_patch():
    model = tiny().eval()
    with torch.no_grad():
        for size in ((8, 8), (6, 10)):
            out = model(torch.randn(2, 4, *size), torch.rand(2), torch.tensor([1, 2]))
            assert out.shape == (2, 4, *size) and out.abs().max() == 0  # adaLN-zero head


def test_blocks_mix_neighbouring_patches_only():
    """A 3x3 depthwise conv per block on the patch grid: with 2 blocks a patch sees 2 patches each way, no further."""
    model = tiny().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for block in model.blocks:  # the channel attention pools the whole map: switch it off to see locality
            block.ca = None
        x, t, y = torch.randn(1, 4, 16, 16), torch.rand(1), torch.tensor([3])
        base = model(x, t, y)
        near, far = x.clone(), x.clone()
        near[..., 0, 4] += 1.0  # patch row 0, column 2
        far[..., 0, 10] += 1.0  # patch row 0, column 5
        near_diff = (model(near, t, y) - base).abs().sum(dim=(0, 1))
        far_diff = (model(far, t, y) - base).abs().sum(dim=(0, 1))
    assert near_diff[0:2, 0:2].sum() > 0  # patch (0, 0): two patches away from column 2
    assert far_diff[0:2, 0:2].sum() == 0  # five patches away


@pytest.mark.parametrize("x_shape, y, match", [
    ((2, 3, 8, 8), [1, 2], "x must be"),
    ((2, 4, 9, 8), [1, 2], "divisible by the patch size"),
    ((2, 4, 8, 8), [1], "labels"),
])
def test_wrong_shapes_are_one_clear_error(x_shape, y, match):
    with pytest.raises(ValueError, match=match):
        tiny()(torch.randn(x_shape), torch.rand(2), torch.tensor(y))


def test_trains_with_flow_matching():
    model = tiny().train()
    transport = create_transport("Linear", "velocity")
    g = torch.Generator().manual_seed(0)
    y = torch.arange(8) % 4
    x1 = torch.randn(4, 4, 8, 8, generator=g)[y]  # one image per class: the label tells the model its data
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss(seed):
        return transport.training_losses(model, x1, {"y": y}, generator=torch.Generator().manual_seed(seed))["loss"]

    with torch.no_grad():
        before = sum(loss(s).mean() for s in range(4)) / 4
    for step in range(40):
        optimizer.zero_grad()
        loss(100 + step).mean().backward()
        optimizer.step()
    with torch.no_grad():
        after = sum(loss(s).mean() for s in range(4)) / 4
    assert after < 0.8 * before


def test_repa_aligns_a_block_by_its_depth():
    model = tiny()
    assert feature_module(model, "2") is model.blocks[1]
    repa = RepaLoss(model, RepaConfig(layer="1", projector_dim=16), target_dim=8).attach(model)
    model(torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 2]))
    assert repa.project(repa.take_feature())[0].shape == (2, 16, 8)  # the 4x4 patch grid
    repa.detach()


def test_bench_times_dico_iso_and_sit(tmp_path):
    config = BenchConfig(models=["DiCo-Iso-S/2", "SiT-S/2"], tasks=["forward", "sample"], batch_sizes=[1],
                         image_size=32, repeats=1, warmup=0, sample_steps=1)
    results = benchmark(config)
    assert [(r.model, r.task) for r in results] == [("DiCo-Iso-S/2", "forward"), ("DiCo-Iso-S/2", "sample"),
                                                    ("SiT-S/2", "forward"), ("SiT-S/2", "sample")]
    assert all(r.seconds and min(r.seconds) > 0 for r in results)


def test_bare_weights_are_recognised_as_dico_iso():
    from dico.checkpoints import infer_spec

    with torch.device("meta"):
        model = dico.create_model("DiCo-Iso-B/2", num_classes=10)
    spec = infer_spec(model.state_dict())
    assert spec["name"] == "DiCo-Iso-B/2" and spec["config"] == model.spec["config"]


def test_dico_train_and_sample_run_it_with_flow_matching(tmp_path):
    """The whole path on the digits: `dico train` with the flow objective, the checkpoint records the model, and
    `dico sample` draws from it with guidance."""
    import numpy as np

    from dico.checkpoints import load_pretrained
    from dico.cli import main as cli
    from dico.training import train
    from helpers import tiny_run_config

    config = tiny_run_config(tmp_path / "run", model="DiCo-Iso-S/2", model_overrides={"hidden_size": 16, "depth": 2},
                             objective="flow", max_steps=2)
    checkpoint = train(config, progress=False, write_grid=False)
    loaded = load_pretrained(checkpoint)
    assert loaded.model.spec["arch"] == "dico-iso" and loaded.objective.to_dict()["kind"] == "flow"
    out = tmp_path / "samples.npz"
    assert cli(["sample", "--ckpt", str(checkpoint), "--method", "euler", "--steps", "3", "--num-samples", "2",
                "--cfg-scale", "2", "--classes", "3,7", "--out", str(out)]) == 0
    with np.load(out) as f:
        assert f["arr_0"].shape[0] == 2
