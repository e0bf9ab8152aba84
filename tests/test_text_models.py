"""Text-conditioned DiCo (the paper's Table 3 variants): `model(x, t, context)` at every DiCo size, the dynamic
depthwise kernel built as the paper describes it, the prompt reaching the output, and the model visible to the tools
(jvp, FlopCounterMode, torch.compile) as DiCo is."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import dico
import dico.checkpoints
from dico.benchmarking import BenchConfig, benchmark, count, model_cost
from dico.conditioning import is_text_model
from dico.models import DICO_SIZES, FeatureCache, TextDiCo, build_model, create_model, list_models
from dico.models.text_dico import dynamic_kernels, per_sample_depthwise

VARIANTS = ("DWC", "CrossAttn")
TOY = dict(hidden_size=32, depth=[1, 1, 1, 1, 1], context_dim=12, context_length=5)


def toy(variant="DWC", perturb=True, **kwargs):
    """A small text model; `perturb` moves every weight (so the zero-initialised text outputs act too)."""
    torch.manual_seed(0)
    model = create_model(f"DiCo-Tiny-{variant}", **{**TOY, **kwargs})
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape) * 0.05)
    return model


def inputs(n=2, size=8, tokens=5, dim=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, size, size, generator=g), torch.rand(n, generator=g) * 999,
            torch.randn(n, tokens, dim, generator=g))


@pytest.mark.parametrize("size", list(DICO_SIZES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_size_has_both_variants_taking_clip_tokens(size, variant):
    name = f"{size}-{variant}"
    assert name in list_models()
    with torch.device("meta"):
        model = create_model(name)
        out = model(torch.zeros(2, 4, 32, 32), torch.zeros(2), torch.zeros(2, 77, 768))
    assert out.shape == (2, 8, 32, 32)
    assert isinstance(model, TextDiCo) and is_text_model(model) and model.num_classes == 0
    assert model.y_embedder is None  # no class table
    assert model.config.context_dim == 768 and model.config.context_length == 77
    assert model.config.text_conditioning == {"DWC": "dwc", "CrossAttn": "cross_attn"}[variant]
    # The DiCo size it is built on, unchanged.
    assert {k: model.config[k] for k in DICO_SIZES[size]} == {k: v for k, v in DICO_SIZES[size].items()}


def test_class_models_keep_their_parameter_names():
    with torch.device("meta"):
        names = [n for n, _ in create_model("DiCo-S").named_parameters()]
    assert "y_embedder.embedding_table_0.weight" in names and not any(".text." in n for n in names)


def test_wrong_context_is_refused_in_one_line():
    model = toy()
    x, t, context = inputs()
    for bad, match in ((context[0], r"\(N, 5, 12\)"), (context[:, :, :8], r"\(N, 5, 12\)"),
                       (context[:, :4], r"\(N, 5, 12\)"), (context[:1], "1 prompts for 2 images"),
                       (context.long(), "float tensor"), ([[0.0]], "float tensor")):
        with pytest.raises(ValueError, match=match):
            model(x, t, bad)


def test_options_are_checked_at_construction():
    for bad, match in ((dict(text_conditioning="film"), "text_conditioning"), (dict(dwc_kernel_norm="l2"), "norm"),
                       (dict(dwc_kernel_size=4), "odd"), (dict(context_length=77, dwc_kernel_size=7), "49 taps"),
                       (dict(dwc_output="gate"), "dwc_output")):
        with pytest.raises(ValueError, match=match):
            create_model("DiCo-Tiny-DWC", **bad)
    with pytest.raises(ValueError, match="attn_head_dim 64 must divide"):
        create_model("DiCo-XL-CrossAttn", attn_head_dim=64)  # 416 channels at level 1


def test_dynamic_kernel_repeats_the_last_token_in_row_major_taps():
    tokens = torch.arange(1.0, 1 + 2 * 4 * 3).reshape(2, 4, 3)  # N=2, L=4 tokens, C=3 channels
    kernels = dynamic_kernels(tokens, 3, norm="none")
    assert kernels.shape == (2, 3, 3, 3)
    for n in range(2):
        for c in range(3):
            for i in range(3):
                for j in range(3):
                    assert kernels[n, c, i, j] == tokens[n, min(3 * i + j, 3), c]
    taps = kernels.flatten(2)
    l1 = dynamic_kernels(tokens - 10, 3, norm="l1").flatten(2)
    assert torch.allclose(l1.abs().sum(-1), torch.ones(2, 3)) and torch.equal(l1.sign(), (taps - 10).sign())
    soft = dynamic_kernels(tokens, 3, norm="softmax").flatten(2)
    assert torch.allclose(soft, taps.softmax(-1))
    assert torch.allclose(dynamic_kernels(tokens, 3, norm="sqrt"), kernels / 3)
    with pytest.raises(ValueError, match="do not fit"):
        dynamic_kernels(torch.zeros(1, 10, 3), 3)


def test_per_sample_depthwise_filters_each_image_with_its_own_kernels():
    g = torch.Generator().manual_seed(0)
    h, kernels = torch.randn(3, 4, 6, 5, generator=g), torch.randn(3, 4, 3, 3, generator=g)
    out = per_sample_depthwise(h.contiguous(memory_format=torch.channels_last), kernels)
    with torch.no_grad():  # (the CPU inference path: a loop over the samples)
        fast = per_sample_depthwise(h.contiguous(memory_format=torch.channels_last), kernels)
    for n in range(3):
        ref = torch.nn.functional.conv2d(h[n:n + 1], kernels[n][:, None], padding=1, groups=4)
        assert torch.allclose(out[n:n + 1], ref, atol=1e-5) and torch.allclose(fast[n:n + 1], ref, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_prompt_reaches_the_output_once_trained_not_at_init(variant):
    x, t, context = inputs()
    other = inputs(seed=2)[2]
    fresh = toy(variant, perturb=False).eval()
    with torch.no_grad():  # zero-initialised text outputs: each block starts as the class-free DiCo block
        assert torch.equal(fresh(x, t, context), fresh(x, t, other))
    model = toy(variant).eval()
    with torch.no_grad():
        a, b = model(x, t, context), model(x, t, other)
        assert (a - b).abs().max() > 1e-3
        # Each image depends on its own prompt only.
        mixed = model(x, t, torch.cat([context[:1], other[1:]]))
        assert torch.allclose(mixed[0], a[0], atol=1e-5) and torch.allclose(mixed[1], b[1], atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_reach_the_text_layers(variant):
    text_out = {"DWC": "text.scale", "CrossAttn": "text.proj.weight"}[variant]
    text_in = {"DWC": "text.mlp.0.weight", "CrossAttn": "text.kv.weight"}[variant]
    x, t, context = inputs()
    for perturb in (False, True):
        model = toy(variant, perturb=perturb).train()
        # (at init the final layer is zero too: a loss on the output would give the blocks no gradient)
        with torch.no_grad():
            model.final_layer.out_proj.weight.normal_(0, 0.02)
            for block in model.blocks():
                block.adaLN_modulation[-1].bias.normal_(0, 0.5)
        model(x, t, context).square().mean().backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        blocks = [n for n in grads if n.endswith(text_out)]
        assert len(blocks) == 5 and all(grads[n].abs().sum() > 0 for n in blocks)
        upstream = [grads[n].abs().sum() > 0 for n in grads if n.endswith(text_in)]
        assert len(upstream) == 5 and all(upstream) == perturb  # zero outputs pass nothing back at init


@pytest.mark.parametrize("variant", VARIANTS)
def test_inference_fast_paths_give_the_autograd_answer(variant):
    model = toy(variant).eval()
    x, t, context = inputs()
    with torch.no_grad():
        fast = model(x, t, context)
    assert torch.allclose(fast, model(x, t, context), atol=1e-5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, t, context)
    assert torch.allclose(low.float(), fast, atol=0.05 * fast.abs().max().item())


def test_guidance_and_feature_cache_take_prompt_tokens():
    model = toy("CrossAttn").eval()
    x, t, context = inputs()
    null = torch.zeros_like(context)
    with torch.no_grad():
        guided = model.forward_with_cfg(torch.cat([x, x]), torch.cat([t, t]), torch.cat([context, null]), 2.0,
                                        guidance_channels="all")
        cond, uncond = model(x, t, context), model(x, t, null)
        expected = uncond + 2.0 * (cond - uncond)  # on the 4 noise channels, not the learned variance
        assert torch.allclose(guided[:2, :4], expected[:, :4], atol=1e-5)
        cache = FeatureCache(depth=1)
        assert torch.equal(model(x, t, context, cache=cache), cond)  # a refresh call computes everything
        cache.refresh = False
        assert torch.allclose(model(x, t, context, cache=cache), cond, atol=1e-6)  # same step: same features


def test_half_precision_embeddings_meet_the_weights_dtype():
    model = toy().eval()
    x, t, context = inputs()
    half = context.half()
    with torch.no_grad():
        assert torch.equal(model(x, t, half), model(x, t, half.float()))


@pytest.mark.parametrize("variant", VARIANTS)
def test_jvp_and_flop_counter_run_through(variant):
    model = toy(variant).eval()
    x, t, context = inputs()
    out, tangent = torch.func.jvp(lambda x_: model(x_, t, context), (x,), (torch.ones_like(x),))
    assert torch.allclose(out, model(x, t, context), atol=1e-5) and tangent.abs().sum() > 0

    def flops(grad):
        with torch.set_grad_enabled(grad), FlopCounterMode(display=False) as counter:
            model(x, t, context)
        return counter.get_total_flops()

    assert flops(True) > 0 and flops(False) == flops(True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_compiled_forward_matches_eager_without_graph_breaks(variant):
    model = toy(variant).eval()
    x, t, context = inputs()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert torch.allclose(compiled(x, t, context), model(x, t, context), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_compiled_training_step_matches_eager(variant):
    model = toy(variant).train()
    x, t, context = inputs()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")

    def step(fn):
        model.zero_grad()
        loss = fn(x, t, context).square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    (loss, grads), (ref_loss, ref_grads) = step(compiled), step(model)
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    for name, grad in grads.items():
        assert torch.allclose(grad, ref_grads[name], rtol=1e-4, atol=1e-6), name


def test_checkpoints_and_converted_files_rebuild_the_text_model(tmp_path):
    model = toy("CrossAttn").eval()
    torch.save({"model": model.state_dict(), "ema": model.state_dict(), "spec": model.spec}, tmp_path / "ckpt.pt")
    dico.checkpoints.convert(tmp_path / "ckpt.pt", tmp_path / "model.safetensors")
    x, t, context = inputs()
    for source in ("ckpt.pt", "model.safetensors"):
        loaded = dico.load_model(tmp_path / source)
        assert isinstance(loaded, TextDiCo) and loaded.spec == model.spec
        with torch.no_grad():
            assert torch.equal(loaded(x, t, context), model(x, t, context))
    # A bare state dict does not say its context length or kernel options: it must be named, and then loads.
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(dico.checkpoints.CheckpointError, match="name it"):
        dico.load_model(tmp_path / "bare.pt")
    named = dico.load_model(tmp_path / "bare.pt", "DiCo-Tiny-CrossAttn", **{**TOY, "in_channels": 4})
    with torch.no_grad():
        assert torch.equal(named(x, t, context), model(x, t, context))


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_round_trips_through_the_spec(variant):
    model = toy(variant, dwc_kernel_norm="softmax", attn_head_dim=16)
    rebuilt = build_model(model.spec)
    assert rebuilt.spec == model.spec and rebuilt.config.dwc_kernel_norm == "softmax"
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x, t, context = inputs()
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x, t, context), model.eval()(x, t, context))


def test_counts_cover_the_text_steps():
    x_s, dwc, attn = (model_cost(n) for n in ("DiCo-S", "DiCo-S-DWC", "DiCo-S-CrossAttn"))
    assert round(x_s.params / 1e6, 1) == 33.1 and round(x_s.macs / 1e9, 2) == 4.25  # the class model, unchanged
    assert x_s.params < dwc.params < attn.params and x_s.macs < dwc.macs < attn.macs
    # The DWC step per block: a token MLP (77 rows), the 81-tap depthwise filter and a layer norm, by hand at the
    # smallest model (C=32, one block per stage, 8x8 latents).
    model = create_model("DiCo-Tiny-DWC", depth=[1, 0, 0, 0, 0])
    plain = dico.create_model("DiCo-Tiny", depth=[1, 0, 0, 0, 0], num_classes=0)
    extra = count(model, (1, 4, 8, 8))[1] - count(plain, (1, 4, 8, 8))[1]
    mlp = 77 * (768 * 32 + 32 * 32)
    # (the map's layer norm: one MAC per element; the output scale folded into the 32 x 81 kernel taps)
    assert extra == mlp + 64 * 32 * 81 + 64 * 32 + 32 * 81


def test_benchmark_times_text_models():
    results = benchmark(BenchConfig(models=["DiCo-Tiny-DWC", "DiCo-Tiny-CrossAttn"], tasks=["forward", "sample"],
                                    batch_sizes=[2], image_size=32, repeats=1, warmup=0, sample_steps=2))
    assert len(results) == 4 and all(r.seconds[0] > 0 for r in results)
