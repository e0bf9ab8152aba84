"""The model's fast paths (channels-last layout, fused modulation and residuals, in-place element-wise ops outside
autograd, channel means as matmuls in bf16, bf16 autocast with cached weights) compute exactly the function of the
straightforward NCHW formulation written out below, for every ablation variant, in train and eval mode, for outputs
and gradients."""

import pytest
import torch
import torch.nn.functional as F

from dico.models import DiCo, create_model


def ref_channel_norm(x):
    # LayerNorm over channels of an NCHW map, without affine: by hand, no permutes.
    mu = x.mean(dim=1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-6)


def ref_modulate(x, shift, scale):
    return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


def ref_conv(conv, x):
    return F.conv2d(x.contiguous(), conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def ref_block(block, x, c, act):
    shift1, scale1, gate1, shift2, scale2, gate2 = F.linear(F.silu(c), block.adaLN_modulation[1].weight,
                                                            block.adaLN_modulation[1].bias).chunk(6, dim=1)
    h = ref_modulate(ref_channel_norm(x), shift1, scale1)
    h = act(ref_conv(block.conv2, ref_conv(block.conv1, h)))
    if block.ca is not None:
        pooled = h.mean(dim=(2, 3), keepdim=True)
        if len(block.ca) == 3:  # CCA: one 1x1 conv
            w = torch.sigmoid(ref_conv(block.ca[1], pooled))
        else:  # SE: reduce, ReLU, expand
            w = torch.sigmoid(ref_conv(block.ca[3], F.relu(ref_conv(block.ca[1], pooled))))
        h = h * w
    x = x + gate1[:, :, None, None] * ref_conv(block.conv3, h)
    h = ref_conv(block.conv5, act(ref_conv(block.conv4, ref_modulate(ref_channel_norm(x), shift2, scale2))))
    return x + gate2[:, :, None, None] * h


def ref_forward(model, x, t, y):
    """The DiCo network in plain NCHW math, reading the model's parameters."""
    act = F.gelu if model.config.activation == "gelu" else F.relu
    c1, c2, c3 = model.conditioning(t, y)
    x = ref_conv(model.x_embedder.proj, x.contiguous())
    skip1 = x
    for b in model.encoder_level_1:
        skip1 = ref_block(b, skip1, c1, act)
    skip2 = F.pixel_unshuffle(ref_conv(model.down1_2.body[0], skip1), 2)
    for b in model.encoder_level_2:
        skip2 = ref_block(b, skip2, c2, act)
    h = F.pixel_unshuffle(ref_conv(model.down2_3.body[0], skip2), 2)
    for b in model.latent:
        h = ref_block(b, h, c3, act)
    h = ref_conv(model.reduce_chan_level2, torch.cat([F.pixel_shuffle(ref_conv(model.up3_2.body[0], h), 2), skip2], 1))
    for b in model.decoder_level_2:
        h = ref_block(b, h, c2, act)
    h = ref_conv(model.reduce_chan_level1, torch.cat([F.pixel_shuffle(ref_conv(model.up2_1.body[0], h), 2), skip1], 1))
    for b in model.decoder_level_1:
        h = ref_block(b, h, c2, act)
    final = model.final_layer
    shift, scale = F.linear(F.silu(c2), final.adaLN_modulation[1].weight, final.adaLN_modulation[1].bias).chunk(2, 1)
    return ref_conv(final.out_proj, ref_modulate(ref_channel_norm(h), shift, scale))


def random_model(seed=0, std=0.2, **kwargs):
    """std=0.05 gives realistic magnitudes for bf16 tests: bf16 error is relative to the signal."""
    torch.manual_seed(seed)
    model = DiCo(**{"hidden_size": 16, "depth": [1, 1, 1, 1, 1], "mlp_ratio": 2, "num_classes": 10, **kwargs})
    with torch.no_grad():  # non-zero adaLN and output layers, so every path contributes
        for p in model.parameters():
            p.normal_(0, std)
    return model


def inputs(n=3, h=12, w=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, h, w, generator=g)
    t = torch.rand(n, generator=g) * 999
    y = torch.randint(0, 11, (n,), generator=g)  # includes the null label 10 sometimes
    return x, t, y


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


VARIANTS = [dict(channel_attention=ca) for ca in ("cca", "se", "none")]
VARIANTS += [dict(kernel_size=k) for k in (5, 7)] + [dict(activation="relu")]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_eval_forward_matches_reference(variant):
    model = random_model(**variant).eval()
    x, t, y = inputs()
    with torch.no_grad():
        assert rel_err(model(x, t, y), ref_forward(model, x, t, y)) < 1e-5


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_bf16_eval_forward_close_to_reference(variant):
    model = random_model(hidden_size=32, std=0.05, **variant).eval()
    x, t, y = inputs()
    with torch.no_grad():
        ref = ref_forward(model, x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, y)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_inference_leaves_inputs_and_cached_features_intact(autocast):
    # Outside autograd the blocks overwrite their own intermediates; a block's input (which the network keeps as a
    # U-Net skip, and FeatureCache keeps between calls) must never be among them.
    model = random_model().eval()
    x, t, y = inputs()
    c = model.conditioning(t, y)[0].detach()
    h = torch.randn(3, 16, 12, 20).contiguous(memory_format=torch.channels_last)
    h_before, c_before, x_before = h.clone(), c.clone(), x.clone()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        block = model.encoder_level_1[0]
        out1 = block(h, c)
        out2 = block(h, c)
        model(x, t, y)
    assert torch.equal(h, h_before) and torch.equal(c, c_before) and torch.equal(x, x_before)
    assert torch.equal(out1, out2)


def test_channels_last_input_and_odd_spatial_sizes():
    model = random_model().eval()
    for h, w in ((12, 20), (4, 4), (20, 12)):
        x, t, y = inputs(h=h, w=w)
        with torch.no_grad():
            ref = ref_forward(model, x, t, y)
            out = model(x.contiguous(memory_format=torch.channels_last), t, y)
        assert out.shape == ref.shape and out.is_contiguous()
        assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("variant", [dict(), dict(channel_attention="se", activation="relu", kernel_size=5)])
def test_train_mode_outputs_and_gradients_match_reference(variant):
    model = random_model(**variant).train()
    x, t, y = inputs()
    weight = torch.randn(3, 8, 12, 20, generator=torch.Generator().manual_seed(5))

    def grads(forward):
        model.zero_grad()
        torch.manual_seed(7)  # same label dropout in both passes
        out = forward(model, x, t, y)
        (out * weight).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out, g = grads(lambda m, *a: m(*a))
    ref_out, ref_g = grads(ref_forward)
    assert rel_err(out, ref_out) < 1e-5
    assert g.keys() == ref_g.keys()
    for name in g:
        assert rel_err(g[name], ref_g[name]) < 1e-4, name


def test_bf16_training_step_gradients_close_to_fp32():
    model = random_model(hidden_size=32, std=0.05).train()
    x, t, y = inputs()

    def grads(autocast):
        model.zero_grad()
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(x, t, y).float().square().mean()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    ref, low = grads(False), grads(True)
    assert ((low - ref).norm() / ref.norm()).item() < 2e-2


def test_registered_model_cfg_matches_reference():
    model = create_model("DiCo-S", num_classes=10)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    x, t, y = inputs(n=4, h=8, w=8)
    y = torch.cat([y[:2], torch.full((2,), 10)])
    with torch.no_grad():
        out = model.forward_with_cfg(x, t, y, 4.0)
        ref = ref_forward(model, torch.cat([x[:2], x[:2]]), t, y)
    cond, uncond = ref[:2, :3], ref[2:, :3]
    guided = uncond + 4.0 * (cond - uncond)
    assert rel_err(out[:2, :3], guided) < 1e-5 and rel_err(out[:, 3:], ref[:, 3:]) < 1e-5


def test_bf16_inference_weight_cache_follows_parameter_updates():
    model = random_model(hidden_size=32, std=0.05).eval()
    x, t, y = inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(x, t, y)
    other = random_model(seed=9, hidden_size=32)
    model.load_state_dict({k: v * 0.25 for k, v in other.state_dict().items()})  # in place: copy_ into params
    with torch.no_grad():
        ref = ref_forward(model, x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            after = model(x, t, y)
    assert rel_err(after, ref) < 1e-2 and rel_err(before, ref) > 0.1


def test_dit_bf16_inference_close_to_fp32():
    torch.manual_seed(0)
    model = create_model("DiT-S/2", input_size=8, num_classes=10).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    x, t, y = inputs(h=8, w=8)
    with torch.no_grad():
        ref = model(x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, y)
    assert rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_inference_ffn_in_batch_slices_matches_the_whole_batch(monkeypatch, autocast):
    import dico.models.fast_ops as fast_ops

    model = random_model(hidden_size=32).eval()
    x, t, y = inputs(n=5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        whole = model(x, t, y)
        hidden = torch.empty(5, 32, 12, 20, dtype=torch.bfloat16 if autocast else torch.float32)  # modulated map
        per_sample = 64 * 12 * 20 * (2 if autocast else 4)  # FFN map of one sample at level 1 (hidden 2 x 32)
        monkeypatch.setattr(fast_ops, "FFN_CHUNK_BYTES", 2 * per_sample)
        assert fast_ops.ffn_chunks(hidden, 64) == 3  # slices of 2, 2 and 1 samples
        sliced = model(x, t, y)
    assert rel_err(sliced, whole) < 1e-6
    if not autocast:
        assert rel_err(sliced, ref_forward(model, x, t, y)) < 1e-5
