"""MMDiT, the text-to-image baseline as REPA trains it: REPA's parameter names and sizes, dico's calling convention
(`model(x, t, context)`), clear errors on wrong shapes, and the same outputs as REPA's own `models/mmdit.py` when
REPA_PATH points at a sihyun-yu/REPA checkout (skipped otherwise)."""

import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest
import torch

import dico
import dico.models
from dico.benchmarking import BenchConfig, count, model_cost
from dico.benchmarking.throughput import _Case
from dico.conditioning import is_text_model
from dico.repa import RepaLoss, feature_module
from dico.config import RepaConfig


def small(depth=2, **overrides):
    torch.manual_seed(0)
    return dico.create_model("MMDiT", depth=depth, **overrides).eval()


def repa_names(depth: int, patch: int = 2, grid: int = 16, context_dim: int = 768, out_channels: int = 4) -> dict:
    """REPA's MMDiT state dict (without its projectors), name -> shape, written out from reading REPA's
    models/mmdit.py: width 32 * depth, MLP 4x, qkv with bias, the last text stream attention-only."""
    d = 32 * depth
    linear = lambda name, fan_in, fan_out: {f"{name}.weight": [fan_out, fan_in], f"{name}.bias": [fan_out]}
    names = {"pos_embed": [1, grid * grid, d], "x_embedder.proj.weight": [d, 4, patch, patch],
             "x_embedder.proj.bias": [d]}
    names.update(linear("t_embedder.mlp.0", 256, d))
    names.update(linear("t_embedder.mlp.2", d, d))
    names.update(linear("context_embedder", context_dim, d))
    for i in range(depth):
        for stream in ("context_block", "x_block"):
            full = stream == "x_block" or i < depth - 1
            prefix = f"joint_blocks.{i}.{stream}"
            names.update(linear(f"{prefix}.attn.qkv", d, 3 * d))
            if full:
                names.update(linear(f"{prefix}.attn.proj", d, d))
                names.update(linear(f"{prefix}.mlp.fc1", d, 4 * d))
                names.update(linear(f"{prefix}.mlp.fc2", 4 * d, d))
            names.update(linear(f"{prefix}.adaLN_modulation.1", d, (6 if full else 2) * d))
    names.update(linear("final_layer.linear", d, patch * patch * out_channels))
    names.update(linear("final_layer.adaLN_modulation.1", d, 2 * d))
    return names


def test_depth_24_has_repas_parameter_names_and_shapes():
    with torch.device("meta"):
        model = dico.create_model("MMDiT")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == repa_names(24)
    assert model.config["depth"] == 24 and model.num_heads == 24


def test_is_a_text_model_with_the_contract_fields():
    model = small()
    assert is_text_model(model)
    assert model.num_classes == 0
    assert model.config["context_dim"] == 768 and model.config["context_length"] == 77
    assert model.learn_sigma is False and model.out_channels == model.in_channels == 4
    assert dico.models.build_model(model.spec).state_dict().keys() == model.state_dict().keys()


def test_output_has_the_input_shape_for_any_token_count():
    model = small()
    x, t = torch.randn(2, 4, 32, 32), torch.rand(2)
    with torch.no_grad():
        for tokens in (77, 5):
            assert model(x, t, torch.randn(2, tokens, 768)).shape == (2, 4, 32, 32)


def test_output_depends_on_the_text():
    model = small()
    with torch.no_grad():  # REPA's default init is not adaLN-zero: the text reaches the output from the start
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        x, t = torch.randn(1, 4, 32, 32), torch.rand(1)
        a, b = model(x, t, torch.randn(1, 77, 768)), model(x, t, torch.randn(1, 77, 768))
    assert (a - b).abs().max() > 1e-4


def test_a_jacobian_vector_product_runs_through_and_equals_finite_differences():
    # The fused attention kernels have no forward derivative; under torch.func.jvp the attention is written out.
    model = small().double()
    x, t, context = torch.randn(1, 4, 32, 32, dtype=torch.float64), torch.rand(1, dtype=torch.float64), \
        torch.randn(1, 77, 768, dtype=torch.float64)
    dx = torch.randn_like(x)
    with torch.no_grad():
        _, tangent = torch.func.jvp(lambda z: model(z, t, context), (x,), (dx,))
        eps = 1e-6
        finite = (model(x + eps * dx, t, context) - model(x - eps * dx, t, context)) / (2 * eps)
    torch.testing.assert_close(tangent, finite, rtol=1e-5, atol=1e-7)


def test_smaller_inputs_get_the_centred_crop_of_the_position_table():
    model = small()
    table = model.pos_embed.reshape(16, 16, -1)
    assert torch.equal(model.position_table(8, 12)[0], table[4:12, 2:14].reshape(96, -1))
    with torch.no_grad():
        assert model(torch.randn(1, 4, 16, 24), torch.rand(1), torch.randn(1, 77, 768)).shape == (1, 4, 16, 24)


def test_position_table_is_the_2d_sincos_table_with_the_column_first():
    model = small(depth=2)  # width 64: columns encoded in channels 0..31, rows in 32..63
    table = model.pos_embed.reshape(16, 16, 64)
    assert torch.allclose(table[3, 5, 0], torch.tensor(5.0).sin())  # sin(column * frequency 1)
    assert torch.allclose(table[3, 5, 32], torch.tensor(3.0).sin())  # sin(row * frequency 1)


def test_512px_latents_get_a_64_by_64_table():
    with torch.device("meta"):
        model = dico.create_model("MMDiT", depth=2, input_size=64)
    assert model.pos_embed.shape == (1, 32 * 32, 64)


@pytest.mark.parametrize("x_shape, context_shape, match", [
    ((2, 3, 32, 32), (2, 77, 768), "x must be"),
    ((2, 4, 33, 32), (2, 77, 768), "multiples of 2"),
    ((2, 4, 64, 64), (2, 77, 768), "at most 32"),
    ((2, 4, 32, 32), (2, 77, 512), "context must be"),
    ((2, 4, 32, 32), (77, 768), "context must be"),
    ((2, 4, 32, 32), (3, 77, 768), "context must be"),
])
def test_wrong_shapes_are_one_clear_error(x_shape, context_shape, match):
    model = small()
    with pytest.raises(ValueError, match=match):
        model(torch.randn(x_shape), torch.rand(2), torch.randn(context_shape))


def test_bad_sizes_are_refused_at_construction():
    with pytest.raises(ValueError, match="divisible"):
        dico.create_model("MMDiT", depth=2, input_size=31)
    with pytest.raises(TypeError, match="num_classes"):
        dico.create_model("MMDiT", depth=2, num_classes=10)


def test_cfg_guides_every_channel_from_prompts_and_null_captions():
    model = small()
    x, t = torch.randn(2, 4, 32, 32), torch.rand(4)
    context = torch.randn(4, 77, 768)
    with torch.no_grad():
        plain = model(torch.cat([x, x]), t, context)
        guided = model.forward_with_cfg(torch.cat([x, x]), t, context, 3.0)
    expected = plain[2:] + 3.0 * (plain[:2] - plain[2:])
    assert torch.allclose(guided[:2], expected, atol=1e-5) and torch.allclose(guided[2:], expected, atol=1e-5)


def test_params_and_macs_are_counted_with_a_context():
    params, macs = count(small(depth=2), (1, 4, 32, 32))
    assert params == sum(p.numel() for p in small(depth=2).parameters())
    assert macs > 0


def test_repas_t2i_setting_costs_505m_params_and_60_gmacs():
    """Depth 24 at 256 px (32 x 32 latents, 256 patches) with CLIP's 77 tokens. The MACs are the matrix products
    counted by hand: per block 12 d^2 per token of each stream (qkv, output, 4x MLP; the last text stream only its
    qkv), the joint attention 2 (T + L)^2 d, the modulations and embedders; norms and scalings add the last 0.1%."""
    cost = model_cost("MMDiT", 256)
    d, tokens, text, depth = 768, 256, 77, 24
    assert cost.params == sum(math.prod(s) for k, s in repa_names(24).items() if k != "pos_embed")
    assert round(cost.params / 1e6, 1) == 505.1
    blocks = depth * 12 * d * d * tokens + (depth - 1) * 12 * d * d * text + 3 * d * d * text
    attention = depth * 2 * (tokens + text) ** 2 * d
    modulation = (2 * depth - 1) * 6 * d * d + 2 * d * d + 2 * d * d
    embedders = 2 * tokens * d * 16 + text * 768 * d + 256 * d + d * d
    by_hand = blocks + attention + modulation + embedders
    assert by_hand <= cost.macs < 1.01 * by_hand
    assert round(cost.macs / 1e9, 2) == 60.52


@pytest.mark.parametrize("task", ["forward", "train", "sample"])
def test_bench_runs_a_text_model_on_context_tokens(task):
    config = BenchConfig(models=["MMDiT"], image_size=256, sample_steps=2, cfg_scale=4.0)
    case = _Case(small(), "MMDiT", "ours", task, 2, "fp32", torch.device("cpu"), config)
    assert case.cond.model_kwargs()["context"].shape == (2, 77, 768)
    assert case.timed(measure_memory=False) > 0


def test_repa_aligns_the_image_stream_of_the_named_block():
    model = small(depth=4)
    assert feature_module(model, "2") is model.joint_blocks[1].x_block
    assert feature_module(model, "auto") is model.joint_blocks[3].x_block  # REPA's 4 for < 24 blocks
    repa = RepaLoss(model, RepaConfig(layer="2", projector_dim=16), target_dim=8).attach(model)
    with torch.no_grad():
        model(torch.randn(2, 4, 32, 32), torch.rand(2), torch.randn(2, 77, 768))
    assert repa.project(repa.take_feature())[0].shape == (2, 256, 8)
    repa.detach()


# ---- side by side with REPA's own MMDiT -------------------------------------------------------------------------

needs_repa = pytest.mark.skipif(not os.environ.get("REPA_PATH"), reason="set REPA_PATH to a sihyun-yu/REPA checkout")


def repa_mmdit():
    """REPA's models/mmdit.py from the checkout at REPA_PATH, imported under its own name (it needs einops)."""
    if "repa_mmdit" not in sys.modules:
        path = Path(os.environ["REPA_PATH"]) / "models" / "mmdit.py"
        spec = importlib.util.spec_from_file_location("repa_mmdit", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["repa_mmdit"] = module
        spec.loader.exec_module(module)
    return sys.modules["repa_mmdit"]


def repa_pair(depth, register_length=0):
    """REPA's MMDiT (random init) and ours holding its weights, loaded strictly without the projectors."""
    torch.manual_seed(0)
    reference = repa_mmdit().MMDiT(input_size=32, depth=depth, register_length=register_length, z_dims=[16],
                                   projector_dim=32, encoder_depth=2).eval()
    ours = dico.create_model("MMDiT", depth=depth, input_size=32, register_length=register_length).eval()
    weights = {k: v for k, v in reference.state_dict().items() if not k.startswith("projectors.")}
    ours.load_state_dict(weights, strict=True)
    return reference, ours


@needs_repa
@pytest.mark.parametrize("depth", [2, 3])
def test_outputs_equal_repas(depth):
    reference, ours = repa_pair(depth)
    g = torch.Generator().manual_seed(1)
    for size, tokens, t in [((32, 32), 77, [0.0, 1.0]), ((32, 32), 77, [0.3, 0.9]), ((16, 24), 10, [0.5, 0.05])]:
        x = torch.randn(2, 4, *size, generator=g)
        context = torch.randn(2, tokens, 768, generator=g)
        with torch.no_grad():
            expected, _ = reference(x, torch.tensor(t), context=context)
            out = ours(x, torch.tensor(t), context)
        assert out.shape == expected.shape
        assert (out - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max().item())


@needs_repa
def test_outputs_equal_repas_with_register_tokens():
    reference, ours = repa_pair(2, register_length=3)
    x, t, context = torch.randn(2, 4, 32, 32), torch.rand(2), torch.randn(2, 77, 768)
    with torch.no_grad():
        assert torch.allclose(ours(x, t, context), reference(x, t, context=context)[0], atol=1e-5)


@needs_repa
def test_fresh_models_share_repas_names_shapes_and_position_table():
    torch.manual_seed(0)
    reference = repa_mmdit().MMDiT(input_size=32, depth=3, z_dims=[16], projector_dim=32)
    ours = dico.create_model("MMDiT", depth=3)
    theirs = {k: v for k, v in reference.state_dict().items() if not k.startswith("projectors.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    assert torch.allclose(ours.pos_embed, theirs["pos_embed"], atol=1e-6)


@needs_repa
def test_repa_features_equal_repas_projected_tokens():
    """dico's REPA hook on block k with REPA's projector weights gives REPA's zs at encoder_depth k."""
    reference, ours = repa_pair(3)
    repa = RepaLoss(ours, RepaConfig(layer="2", projector_dim=32), target_dim=16).attach(ours)
    repa.projector.load_state_dict({k.removeprefix("projectors.0."): v for k, v in reference.state_dict().items()
                                    if k.startswith("projectors.0.")})
    x, t, context = torch.randn(2, 4, 32, 32), torch.rand(2), torch.randn(2, 77, 768)
    with torch.no_grad():
        _, zs = reference(x, t, context=context)
        ours(x, t, context)
        projected, _ = repa.project(repa.take_feature())
    repa.detach()
    assert torch.allclose(projected, zs[0], atol=1e-5)


def test_gradient_checkpointing_wraps_the_joint_blocks_and_keeps_the_gradients():
    from dico.training.loop import enable_gradient_checkpointing

    x, t, context = torch.randn(2, 4, 16, 16), torch.rand(2), torch.randn(2, 7, 768)
    grads = []
    for checkpointed in (False, True):
        model = small().train()
        if checkpointed:
            enable_gradient_checkpointing(model)
        model(x, t, context).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0


def test_bare_weights_are_recognised_as_mmdit_of_their_depth():
    from dico.checkpoints import infer_spec

    with torch.device("meta"):
        model = dico.create_model("MMDiT", depth=6, input_size=64, register_length=2)
    spec = infer_spec(model.state_dict())
    assert spec["name"] == "MMDiT" and spec["config"] == model.spec["config"]
