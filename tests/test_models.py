"""The DiCo family and the DiT baseline: official names, shapes, outputs and the paper's sizes."""

import json

import pytest
import torch

import dico
from dico.models import DiCo, DiT
from helpers import FIXTURES, rel_err

OFFICIAL_SHAPES = json.loads((FIXTURES / "official_state_dict_shapes.json").read_text())
DICO_NAMES = ["DiCo-S", "DiCo-B", "DiCo-L", "DiCo-XL", "DiCo-H"]


def meta_model(name, **overrides):
    with torch.device("meta"):
        return dico.create_model(name, **overrides)


@pytest.mark.parametrize("name", DICO_NAMES)
def test_parameter_names_and_shapes_equal_the_official_ones(name):
    model = meta_model(name)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == OFFICIAL_SHAPES[name]
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_SHAPES[f"{name}:params"]


def test_forward_matches_official_outputs(official, official_model):
    f = official["forward"]
    with torch.no_grad():
        out = official_model(f["x"], f["t"], f["y"])
    assert out.shape == f["out"].shape
    assert rel_err(out, f["out"]) < 1e-5


def test_cfg_matches_official_three_channel_guidance(official, official_model):
    c = official["cfg"]
    with torch.no_grad():
        out = official_model.forward_with_cfg(c["x"], c["t"], c["y"], c["scale"])
    assert rel_err(out, c["out"]) < 1e-5


def test_cfg_on_all_channels_guides_every_noise_channel(official, official_model):
    c = official["cfg"]
    with torch.no_grad():
        plain = official_model(torch.cat([c["x"][:2]] * 2), c["t"], c["y"])
        out = official_model.forward_with_cfg(c["x"], c["t"], c["y"], c["scale"], guidance_channels="all")
    cond, uncond = plain[:2, :4], plain[2:, :4]
    expected = uncond + c["scale"] * (cond - uncond)
    assert rel_err(out[:2, :4], expected) < 1e-6
    assert rel_err(out[2:, :4], expected) < 1e-6
    assert torch.equal(out[:, 4:], plain[:, 4:])  # the variance channels are never guided


def official_state_dict(name) -> dict:
    """An official checkpoint's state dict for `name` as the release writes it: its exact names and shapes (meta
    tensors: no memory, no values)."""
    return {k: torch.empty(shape, device="meta") for k, shape in OFFICIAL_SHAPES[name].items()}


@pytest.mark.parametrize("name", DICO_NAMES)
def test_official_state_dict_loads_strictly_into_a_named_size(name):
    from dico.checkpoints import infer_spec

    official = official_state_dict(name)
    model = meta_model(name)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: v.shape for k, v in official.items()}
    result = model.load_state_dict(official, strict=True, assign=True)  # raises on any missing, extra or misshapen key
    assert not result.missing_keys and not result.unexpected_keys
    # The size is recognised from the weights alone, as dico.load_pretrained does for official files.
    assert infer_spec(official) == model.spec and model.spec["name"] == name


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (16, 24), (8, 8)])
def test_any_resolution_divisible_by_four(size):
    model = DiCo(hidden_size=16, depth=[1, 1, 1, 1, 1], num_classes=10).eval()
    x = torch.randn(2, 4, *size)
    out = model(x, torch.tensor([1, 999]), torch.tensor([0, 10]))
    assert out.shape == (2, 8, *size)


def test_pixel_space_model_and_overrides_are_honoured():
    model = dico.create_model("DiCo-S", in_channels=3, num_classes=10, learn_sigma=False, class_dropout_prob=0.0)
    assert model.x_embedder.proj.in_channels == 3
    assert model.final_layer.out_proj.out_channels == 3
    assert model.y_embedder.embedding_table_0.num_embeddings == 10  # no null row without label dropout
    out = model(torch.randn(1, 3, 16, 16), torch.tensor([5]), torch.tensor([9]))
    assert out.shape == (1, 3, 16, 16)


def test_new_model_is_adaLN_zero_and_predicts_zero():
    model = DiCo(hidden_size=16, depth=[1, 1, 1, 1, 1], num_classes=10)
    out = model(torch.randn(2, 4, 8, 8), torch.tensor([3, 7]), torch.tensor([1, 2]))
    assert torch.count_nonzero(out) == 0
    assert all(torch.count_nonzero(b.adaLN_modulation[-1].weight) == 0 for b in model.blocks())
    assert model.t_embedder_1.mlp[0].weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_unconditional_model_ignores_labels():
    model = DiCo(hidden_size=16, depth=[1, 1, 1, 1, 1], num_classes=0).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 3])
    assert torch.equal(model(x, t, torch.tensor([0, 0])), model(x, t, torch.tensor([5, 9])))


@pytest.mark.parametrize("attention,params", [("cca", 16 * 16 + 16), ("se", 16 * 4 + 4 + 4 * 16 + 16), ("none", 0)])
def test_channel_attention_variants(attention, params):
    model = DiCo(hidden_size=16, depth=[1, 0, 0, 0, 0], num_classes=10, channel_attention=attention)
    block = model.encoder_level_1[0]
    ca_params = sum(p.numel() for n, p in block.named_parameters() if n.startswith("ca."))
    assert ca_params == params
    assert model(torch.randn(1, 4, 8, 8), torch.tensor([1]), torch.tensor([1])).shape == (1, 8, 8, 8)


@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_depthwise_kernel_variants(kernel):
    model = DiCo(hidden_size=16, depth=[1, 1, 1, 1, 1], num_classes=10, kernel_size=kernel)
    assert model.encoder_level_1[0].conv2.weight.shape == (16, 1, kernel, kernel)
    assert model(torch.randn(1, 4, 12, 12), torch.tensor([1]), torch.tensor([1])).shape == (1, 8, 12, 12)


def test_relu_variant_changes_the_function():
    torch.manual_seed(0)
    gelu = DiCo(hidden_size=16, depth=[1, 1, 1, 1, 1], num_classes=10).eval()
    for p in gelu.parameters():
        torch.nn.init.normal_(p, std=0.2)
    relu = DiCo(hidden_size=16, depth=[1, 1, 1, 1, 1], num_classes=10, activation="relu").eval()
    relu.load_state_dict(gelu.state_dict())
    x, t, y = torch.randn(1, 4, 8, 8), torch.tensor([1]), torch.tensor([1])
    assert not torch.allclose(gelu(x, t, y), relu(x, t, y))


@pytest.mark.parametrize("kwargs,match", [
    (dict(channel_attention="eca"), "channel_attention"),
    (dict(activation="swish"), "activation"),
    (dict(kernel_size=4), "odd"),
    (dict(depth=[1, 1, 1]), "5 stage depths"),
])
def test_bad_configuration_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiCo(hidden_size=16, **{"depth": [1, 1, 1, 1, 1], **kwargs})


@pytest.mark.parametrize("shape,t,y,match", [
    ((1, 4, 10, 8), [1], [1], "divisible by 4"),
    ((1, 3, 8, 8), [1], [1], r"\(N, 4, H, W\)"),
    ((2, 4, 8, 8), [1], [1, 1], "1-D tensor of 2 timesteps"),
    ((2, 4, 8, 8), [1, 1], [1], "1-D tensor of 2 labels"),
])
def test_wrong_shapes_are_clear_errors(shape, t, y, match):
    model = DiCo(hidden_size=16, depth=[1, 1, 1, 1, 1], num_classes=10)
    with pytest.raises(ValueError, match=match):
        model(torch.randn(*shape), torch.tensor(t), torch.tensor(y))


def test_registry_lists_every_size_and_rejects_unknown_names():
    names = dico.list_models()
    assert names[:5] == DICO_NAMES and "DiCo-Tiny" in names
    assert {"DiT-S/2", "DiT-B/4", "DiT-L/8", "DiT-XL/2"} <= set(names)
    with pytest.raises(ValueError, match="unknown model 'DiCo-XXL'.*DiCo-XL.*Valid names: DiCo-S"):
        dico.create_model("DiCo-XXL")
    with pytest.raises(TypeError, match="no option"):
        dico.create_model("DiCo-S", hidden=3)


def test_dit_uses_the_official_parameter_names_and_size():
    model = meta_model("DiT-XL/2")
    keys = set(model.state_dict())
    for key in ["pos_embed", "x_embedder.proj.weight", "t_embedder.mlp.2.bias", "y_embedder.embedding_table.weight",
                "blocks.27.attn.qkv.weight", "blocks.0.attn.proj.bias", "blocks.0.mlp.fc1.weight",
                "blocks.0.mlp.fc2.bias", "blocks.0.adaLN_modulation.1.weight", "final_layer.linear.weight",
                "final_layer.adaLN_modulation.1.bias"]:
        assert key in keys
    # DiT-XL/2 as reported by the DiT training script.
    assert sum(p.numel() for p in model.parameters()) == 675_129_632


def test_dit_attention_equals_explicit_softmax_attention():
    torch.manual_seed(0)
    model = DiT(input_size=8, patch_size=2, hidden_size=32, depth=1, num_heads=4, num_classes=10).eval()
    attn = model.blocks[0].attn
    x = torch.randn(2, 16, 32)
    q, k, v = attn.qkv(x).reshape(2, 16, 3, 4, 8).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 16, 32))
    assert rel_err(attn(x), expected) < 1e-5


def test_dit_position_table_is_the_mae_sincos_table():
    model = DiT(input_size=8, patch_size=2, hidden_size=8, depth=1, num_heads=2, num_classes=10)
    table = model.pos_embed[0]
    # token 5 sits at row 1, column 1 of the 4x4 grid; first half encodes the column.
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2)
    col = torch.cat([torch.sin(1 * omega), torch.cos(1 * omega)])
    assert torch.allclose(table[5, :4].double(), col, atol=1e-6)
    assert torch.allclose(table[2, 4:].double(), torch.cat([torch.sin(0 * omega), torch.cos(0 * omega)]), atol=1e-6)


def test_dit_rejects_a_resolution_it_was_not_built_for():
    model = DiT(input_size=8, patch_size=2, hidden_size=8, depth=1, num_heads=2, num_classes=10)
    with pytest.raises(ValueError, match="input_size=8"):
        model(torch.randn(1, 4, 16, 16), torch.tensor([1]), torch.tensor([1]))


def test_every_model_carries_its_spec_from_construction():
    model = dico.create_model("DiCo-S", num_classes=10, input_size=32)  # DiCo ignores input_size: any resolution
    spec = model.spec
    assert spec == dico.models.model_spec("DiCo-S", num_classes=10)
    assert spec["name"] == "DiCo-S" and spec["arch"] == "dico" and "input_size" not in spec["config"]
    assert json.loads(json.dumps(spec)) == spec  # checkpoints store it as a plain dict
    rebuilt = dico.models.build_model(json.loads(json.dumps(spec)))
    assert rebuilt.spec == spec and rebuilt.state_dict().keys() == model.state_dict().keys()
    assert DiCo(hidden_size=16, depth=[1, 1, 1, 1, 1]).spec["name"] is None
    dit = dico.create_model("DiT-S/2", input_size=8)
    assert dit.spec["arch"] == "dit" and dit.config.input_size == 8 and dit.pos_embed.shape[1] == 16


def test_config_is_the_constructor_keywords_with_defaults_filled_in():
    model = DiCo(hidden_size=16, depth=(1, 2, 1, 2, 1), num_classes=10, kernel_size=5)
    assert model.config.hidden_size == 16 and model.config.kernel_size == 5 and model.config.depth == [1, 2, 1, 2, 1]
    assert model.config["activation"] == "gelu" and model.config.num_classes == 10
    assert DiCo(**model.config).config == model.config  # the config rebuilds the model
    with pytest.raises(AttributeError, match="no field"):
        model.config.width
    with pytest.raises(TypeError):
        DiCo(16)  # configuration by keyword only


def test_checkpoint_specs_written_before_the_registry_split_still_build():
    old = {"name": "DiCo-Tiny", "arch": "dico", "config": {
        "hidden_size": 16, "depth": [1, 1, 1, 1, 1], "mlp_ratio": 2.0, "in_channels": 1, "num_classes": 10,
        "learn_sigma": True, "class_dropout_prob": 0.1, "channel_attention": "cca", "kernel_size": 3,
        "activation": "gelu", "se_reduction": 4}}
    model = dico.models.build_model(old)
    # options added since then take their defaults (second_time: MeanFlow's second time input, off)
    now = {**old, "config": {**old["config"], "second_time": False}}
    assert model.spec == now and model.in_channels == 1
    assert dico.models.model_spec("DiCo-Tiny", **{k: v for k, v in old["config"].items()}) == now


@pytest.mark.parametrize("requested,in_channels,expected", [(3, 4, 3), ("all", 4, 4), (None, 4, 4), (3, 1, 1),
                                                            ("all", 1, 1), (2, 4, 2)])
def test_guidance_channels_resolve_once_for_every_caller(requested, in_channels, expected):
    assert dico.models.resolve_guidance_channels(requested, in_channels) == expected


def test_guidance_on_a_one_channel_pixel_model_never_touches_the_variance():
    model = DiCo(hidden_size=16, depth=[1, 1, 1, 1, 1], num_classes=10, in_channels=1).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([5, 5]), torch.tensor([3, 10])
    with torch.no_grad():
        plain = model(torch.cat([x[:1], x[:1]]), t, y)
        out = model.forward_with_cfg(x, t, y, 2.0)  # the official 3 channels, clamped to the 1 noise channel
    assert torch.equal(out[:, 1:], plain[:, 1:])
    assert rel_err(out[:1, :1], plain[1:, :1] + 2.0 * (plain[:1, :1] - plain[1:, :1])) < 1e-6
