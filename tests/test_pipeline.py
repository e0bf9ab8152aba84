"""dico in diffusers: the model components, DiCoPipeline against dico's own sampler, pipeline folders, schedulers."""

import importlib
import inspect
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from dico.checkpoints import atomic_save
from dico.cli import main as cli
from dico.models import DiCo, DiT, build_model, model_spec
from dico.objectives import FlowObjective
from dico.sampling import OutputSpace, SamplingOptions, generate
from dico.transport.sampler import time_grid
from helpers import no_warnings

pytest.importorskip("diffusers")
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, DiffusionPipeline,  # noqa: E402
                       DPMSolverMultistepScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
                       FlowMatchHeunDiscreteScheduler)

from dico.pipelines import (DiCo2DModel, DiCoPipeline, DiCoScheduler, DiT2DModel, as_component,  # noqa: E402
                            flow_sigmas, imagenet_labels, model_card, pipeline_from_network, push_to_hub,
                            save_pipeline)

SPACE = OutputSpace(resolution=8, channels=1)
SPEC = model_spec("DiCo-Tiny", in_channels=1, num_classes=10, hidden_size=16, depth=[1, 1, 1, 1, 1])


def random_network(spec=SPEC, std=0.05, seed=0):
    """A dico network with non-trivial weights (the adaLN-zero init would make every output zero)."""
    network = build_model(spec)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return network.eval()


def images(output) -> np.ndarray:
    return np.stack([np.asarray(image) for image in output.images])


@pytest.fixture(scope="module")
def network():
    return random_network()


@pytest.fixture(scope="module")
def pipe(network):
    pipe = pipeline_from_network(network, SPACE)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def checkpoint(network, tmp_path_factory):
    """Our training checkpoint format, digits demo recipe recorded."""
    path = tmp_path_factory.mktemp("ckpt") / "0000010.pt"
    atomic_save({"format": "dico-train/1", "model": network.state_dict(), "ema": network.state_dict(), "spec": SPEC,
                 "space": {"resolution": 8, "channels": 1, "vae": None, "latent_scale": 0.18215}, "step": 10,
                 "config": {"model": "DiCo-Tiny", "data": None, "lr": 0.001, "global_batch": 64, "max_steps": 10,
                            "ema_decay": 0.995, "diffusion_steps": 1000, "noise_schedule": "linear"}}, path)
    return path


@pytest.fixture(scope="module")
def folder(checkpoint, tmp_path_factory):
    return save_pipeline(checkpoint, tmp_path_factory.mktemp("pipe") / "dico-digits")


# --------------------------------------------------------------------------------------------- model components


def test_component_config_is_the_constructor_signature():
    for network_class, component_class in ((DiCo, DiCo2DModel), (DiT, DiT2DModel)):
        keywords = list(inspect.signature(network_class.__init__).parameters)[1:]
        with torch.device("meta"):  # the defaults are full-size networks: no need to fill their weights
            component = component_class()
        assert [k for k in component.config if not k.startswith("_")] == keywords
        assert isinstance(component, network_class)


def test_component_loads_official_weights_strictly_and_matches_dico_bit_for_bit(official, official_model):
    config = {k: v for k, v in official["config"].items() if k != "input_size"}
    component = DiCo2DModel(**config)
    component.load_state_dict(official["state_dict"], strict=True)
    component.eval()
    f = official["forward"]
    assert torch.equal(component(f["x"], f["t"], f["y"]), official_model(f["x"], f["t"], f["y"]))
    c = official["cfg"]
    assert torch.equal(component.forward_with_cfg(c["x"], c["t"], c["y"], c["scale"]),
                       official_model.forward_with_cfg(c["x"], c["t"], c["y"], c["scale"]))


@pytest.mark.parametrize("spec", [SPEC, model_spec("DiT-S/2", input_size=8, in_channels=1, num_classes=10,
                                                     depth=2, hidden_size=64, num_heads=2)], ids=["dico", "dit"])
def test_component_save_and_from_pretrained_round_trip_in_safetensors(spec, tmp_path):
    network = random_network(spec)
    component = as_component(network)
    component.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = type(component).from_pretrained(tmp_path).eval()
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 500, 999]), torch.tensor([1, 2, 10])
    assert torch.equal(loaded(x, t, y), network(x, t, y))
    assert json.loads((tmp_path / "config.json").read_text())["num_classes"] == 10


def test_importing_dico_does_not_import_diffusers():
    code = "import sys, dico, dico.models, dico.sampling; assert 'diffusers' not in sys.modules, 'diffusers imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------- the pipeline and dico's sampler


@pytest.mark.parametrize("guidance, steps, sampler", [(1.0, 12, "ddpm"), (2.0, 12, "ddpm"), (2.0, 8, "ddim")])
def test_pipeline_makes_the_images_of_dico_sampling_for_the_same_seed(pipe, network, guidance, steps, sampler):
    labels = [3, 7, 1, 0]
    expected = generate(network, SPACE, range(4), torch.tensor(labels),
                        SamplingOptions(method=sampler, steps=steps, cfg_scale=guidance, seed=5))
    scheduled = DiCoPipeline(**{**pipe.components,
                                "scheduler": DiCoScheduler.from_config(pipe.scheduler.config, sampler=sampler)},
                             id2label=pipe.config.id2label, sample_size=8)
    scheduled.set_progress_bar_config(disable=True)
    got = images(scheduled(labels, guidance_scale=guidance, num_inference_steps=steps, seed=5))
    assert got.shape == expected.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(got, expected)
    assert len({im.tobytes() for im in got}) == 4  # labels and per-image noise make every image different


def test_defaults_are_the_official_protocol(pipe):
    signature = inspect.signature(DiCoPipeline.__call__).parameters
    assert signature["num_inference_steps"].default == 250
    assert signature["guidance_scale"].default == 1.5
    assert signature["guidance_channels"].default == 3
    assert isinstance(pipe.scheduler, DiCoScheduler) and pipe.scheduler.config.sampler == "ddpm"


def test_pipeline_folder_from_a_checkpoint_makes_the_images_of_the_dico_sample_command(folder, checkpoint, tmp_path):
    npz = tmp_path / "s.npz"
    assert cli(["sample", "--ckpt", str(checkpoint), "--classes", "3,7", "--num-samples", "4", "--steps", "10",
                "--cfg-scale", "2", "--seed", "11", "--out", str(npz)]) == 0
    loaded = DiCoPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    got = images(loaded(["3", "7", "3", "7"], guidance_scale=2.0, num_inference_steps=10, seed=11))
    with np.load(npz) as f:
        np.testing.assert_array_equal(got, f["arr_0"])


def test_latent_pipeline_decodes_through_its_vae_as_dico_does():
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1).eval()
    network = random_network(model_spec("DiCo-Tiny", num_classes=10, hidden_size=16, depth=[1, 1, 1, 1, 1]))
    space = OutputSpace(8, 4, vae="a-local-vae")
    pipe = pipeline_from_network(network, space, vae=vae)
    pipe.set_progress_bar_config(disable=True)
    expected = generate(network, space, range(2), torch.tensor([4, 9]),
                        SamplingOptions(steps=6, cfg_scale=1.5, seed=2), vae=vae)
    got = images(pipe([4, 9], num_inference_steps=6, seed=2))
    assert got.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(got, expected)
    assert ((got > 0) & (got < 255)).mean() > 0.5  # decoded, not clipped noise: the comparison has teeth
    assert pipe([4], num_inference_steps=2, seed=2, output_type="latent").images.shape == (1, 4, 8, 8)


def test_images_do_not_depend_on_the_batch_with_a_seed(pipe):
    alone = images(pipe([7], num_inference_steps=6, guidance_scale=2.0, seed=4))
    batched = images(pipe([7, 2, 5], num_inference_steps=6, guidance_scale=2.0, seed=4))
    np.testing.assert_array_equal(alone[0], batched[0])


def test_output_types_and_generators(pipe):
    pil = pipe([1, 2], num_inference_steps=4, seed=0).images
    assert [im.size for im in pil] == [(8, 8), (8, 8)] and pil[0].mode == "RGB"
    arr = pipe([1, 2], num_inference_steps=4, seed=0, output_type="np").images
    assert arr.shape == (2, 8, 8, 1) and arr.dtype == np.float32 and 0 <= arr.min() and arr.max() <= 1
    raw = pipe([1, 2], num_inference_steps=4, seed=0, output_type="latent").images
    assert torch.is_tensor(raw) and raw.shape == (2, 1, 8, 8)
    np.testing.assert_allclose(arr[..., 0], (raw[:, 0] / 2 + 0.5).clamp(0, 1).numpy())
    # A torch generator gives diffusers' semantics: reproducible from the generator, other noise than a seed's.
    a = pipe([1], num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="latent").images
    b = pipe([1], num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="latent").images
    assert torch.equal(a, b) and not torch.equal(a, raw[:1])
    tuple_out = pipe([1], num_inference_steps=2, seed=0, return_dict=False)
    assert isinstance(tuple_out, tuple) and len(tuple_out[0]) == 1


def test_bad_arguments_are_refused_clearly(pipe):
    with pytest.raises(ValueError, match="either seed"):
        pipe([1], seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="output_type"):
        pipe([1], seed=0, output_type="jpeg")
    with pytest.raises(ValueError, match=r"class ids in \[0, 10\), got 10"):
        pipe([10], seed=0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe([1], seed=0, num_inference_steps=0)
    with pytest.raises(ValueError, match="empty"):
        pipe([], seed=0)
    no_null = pipeline_from_network(random_network(model_spec("DiCo-Tiny", in_channels=1, num_classes=10,
                                                              class_dropout_prob=0.0)), SPACE)
    with pytest.raises(ValueError, match="null class"):
        no_null([1], guidance_scale=2.0, seed=0)


def test_label_ids_come_from_the_class_names_in_the_config(pipe):
    assert pipe.get_label_ids(["3", "0", "9"]) == [3, 0, 9]
    with pytest.raises(ValueError, match="Did you mean '3'"):
        pipe.get_label_ids(["33"])
    names = imagenet_labels()
    assert len(names) == 1000 and names["207"] == "golden retriever"
    imagenet = pipeline_from_network(random_network(model_spec("DiCo-Tiny", in_channels=1, num_classes=1000)), SPACE)
    assert imagenet.get_label_ids(["golden retriever", "tabby", "tench"]) == [207, 281, 0]


@pytest.mark.parametrize("scheduler, options", [
    (DDIMScheduler, {}),
    (DPMSolverMultistepScheduler, {}),
    (DDPMScheduler, {"variance_type": "learned_range"}),
    (DDPMScheduler, {}),
    (EulerDiscreteScheduler, {}),
], ids=["ddim", "dpm-solver++", "ddpm-learned-range", "ddpm-fixed", "euler"])
def test_diffusers_schedulers_can_be_swapped_in(pipe, scheduler, options):
    swapped = DiCoPipeline(**{**pipe.components, "scheduler": scheduler.from_config(pipe.scheduler.config, **options)},
                           id2label=pipe.config.id2label, sample_size=8)
    swapped.set_progress_bar_config(disable=True)
    assert swapped.scheduler.config.num_train_timesteps == 1000 and swapped.scheduler.config.beta_end == 0.02
    assert swapped.scheduler.config.get("clip_sample", False) is False  # latents must not be clipped to [-1, 1]
    first = swapped([1, 2], guidance_scale=2.0, num_inference_steps=10, seed=3, output_type="latent").images
    again = swapped([1, 2], guidance_scale=2.0, num_inference_steps=10, seed=3, output_type="latent").images
    assert first.shape == (2, 1, 8, 8) and torch.isfinite(first).all()
    assert torch.equal(first, again)  # a seed keys the noise for stochastic schedulers too


def test_progress_bar_is_diffusers(pipe, capsys):
    pipe.set_progress_bar_config(disable=False)
    try:
        pipe([1], num_inference_steps=3, seed=0)
    finally:
        pipe.set_progress_bar_config(disable=True)
    assert "3/3" in capsys.readouterr().err


def test_dtype_and_device_moves(network):
    pipe = pipeline_from_network(random_network(SPEC), SPACE).to("cpu", torch.float16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.dtype == torch.float16
    out = pipe([1, 2], num_inference_steps=3, seed=0, output_type="np").images
    assert out.shape == (2, 8, 8, 1) and np.isfinite(out).all()


def test_model_cpu_offload(monkeypatch):
    pipe = pipeline_from_network(random_network(SPEC), SPACE)
    pipe.set_progress_bar_config(disable=True)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="accelerator"):
            pipe.enable_model_cpu_offload()
        pytest.skip("model CPU offload moves each component to an accelerator when used; none here")
    call = dict(class_labels=[1, 2], guidance_scale=2.0, num_inference_steps=3, seed=0, output_type="latent")
    expected = pipe(**call).images  # the pipeline on the CPU, no offload
    pipe.enable_model_cpu_offload()
    # The offloaded transformer runs on the GPU: other kernels and summation orders than the CPU's, so the samples
    # equal the CPU's to float32 rounding, not bit for bit. TF32 (the default for cuDNN convolutions) is switched
    # off: it rounds the convolutions' inputs to 10 mantissa bits, far coarser than the rounding compared here.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    got = pipe(**call).images
    assert got.device.type == "cuda"  # computed on the accelerator
    assert next(pipe.transformer.parameters()).device.type == "cpu"  # and the weights went back after the call
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)
    assert not torch.equal(expected[0], expected[1])  # (labels 1 and 2 give different samples: a real comparison)


# ----------------------------------------------------------------------------------------------- pipeline folders


def test_folder_names_dicos_classes_and_loads_with_the_generic_loader_offline(folder, pipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["dico_pipeline", "DiCoPipeline"]
    assert index["transformer"] == ["dico.pipelines.models", "DiCo2DModel"]
    assert index["scheduler"] == ["dico.diffusion.scheduler", "DiCoScheduler"]
    assert index["vae"] == [None, None] and index["sample_size"] == 8 and index["id2label"]["7"] == "7"
    assert (folder / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(folder)
    generic = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(generic) is DiCoPipeline and isinstance(generic.transformer, DiCo2DModel) and generic.vae is None
    generic.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(images(generic([4, 2], num_inference_steps=5, seed=9)),
                                  images(pipe([4, 2], num_inference_steps=5, seed=9)))
    resaved = folder.parent / "resaved"
    generic.save_pretrained(resaved)
    assert DiCoPipeline.from_pretrained(resaved).config.id2label == generic.config.id2label
    # folders written before the scheduler moved to dico.diffusion name its old module: they load the same
    index["scheduler"] = ["dico.pipelines.scheduler", "DiCoScheduler"]
    (resaved / "model_index.json").write_text(json.dumps(index))
    old = DiCoPipeline.from_pretrained(resaved)
    assert isinstance(old.scheduler, DiCoScheduler)
    old.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(images(old([4, 2], num_inference_steps=5, seed=9)),
                                  images(pipe([4, 2], num_inference_steps=5, seed=9)))


def test_model_card_tells_architecture_recipe_license_and_how_to_load(folder):
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\nlicense: mit")
    for needed in ("DiCo-Tiny", "DiCo2DModel", "pixels, 8x8x1", "| lr | 0.001 |", "| global_batch | 64 |",
                   "for 10 steps", "## License", "DiCoPipeline.from_pretrained", "trust_remote_code=True"):
        assert needed in card, needed


def test_model_card_fills_every_field_of_its_template_for_either_objective(folder, flow_pipe):
    ddpm, flow = (folder / "README.md").read_text(), model_card(flow_pipe, {})
    for card in (ddpm, flow):
        assert "$" not in card and card.endswith("\n## License\n\nMIT\n")
    assert "- Objective: DDPM (noise prediction, iDDPM learned-range variance)\n" in ddpm
    assert "seed=0).images   # = dico sample --seed 0\n" in ddpm and "DPMSolverMultistepScheduler" in ddpm
    assert "- Objective: flow matching as SiT (path Linear, prediction velocity;" in flow
    assert "# sigmas=flow_sigmas(250): = dico sample --method euler --steps 251 --seed 0\n" in flow
    assert "FlowMatchHeunDiscreteScheduler" in flow and "The checkpoint does not record its training recipe." in flow



def test_a_pixel_folder_records_no_latent_scale_names_no_local_path_and_honours_the_umask(checkpoint, tmp_path):
    old = os.umask(0o022)
    try:
        out = save_pipeline(checkpoint, tmp_path / "pixels")  # an absolute path to a local checkpoint
    finally:
        os.umask(old)
    assert json.loads((out / "model_index.json").read_text())["latent_scale"] is None  # pixels are not scaled
    card = (out / "README.md").read_text()
    assert f"`{checkpoint.name}`" in card and str(checkpoint.parent) not in card
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert modes["transformer/diffusion_pytorch_model.safetensors"] == 0o644  # safetensors alone writes 0600
    assert set(modes.values()) == {0o644}, modes
    assert DiCoPipeline.from_pretrained(out).config.latent_scale is None


def test_the_readme_scheduler_swap_and_the_demo_samplers_warn_of_nothing(folder):
    with no_warnings():
        pipe = DiCoPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # as the README does
        pipe(["3", "7"], num_inference_steps=3, seed=0)
        made = {name: make(pipe.scheduler.config) for name, make in pipe.objective.pipeline_samplers().items()}
    assert [type(s).__name__ for s in made.values()] == ["DiCoScheduler", "DiCoScheduler",
                                                         "DPMSolverMultistepScheduler"]
    # sampler and eta still round-trip through a config: dropped for other schedulers only at their defaults
    ddim = DiCoScheduler.from_config(DiCoScheduler(sampler="ddim", eta=0.5).config)
    assert (ddim.config.sampler, ddim.config.eta) == ("ddim", 0.5)
    assert DiCoScheduler.from_config(made["DDIM"].config).config.sampler == "ddim"


def test_push_to_hub_without_network_says_what_to_do(folder):
    with socket.socket() as s:  # a port nothing listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError, match="network access and a write token"):
        push_to_hub(folder, "someone/dico-digits", token="hf_not_a_real_token", endpoint=f"http://127.0.0.1:{port}")
    with pytest.raises(FileNotFoundError, match="not a pipeline folder"):
        push_to_hub(folder / "transformer", "someone/dico-digits")


def test_official_checkpoint_converts_with_its_vae_and_imagenet_class_names(tmp_path, monkeypatch):
    """An official-format checkpoint ({"model", "ema", "args"}) of DiCo-S, a local VAE folder: a latent pipeline with
    ImageNet's class names that loads offline and samples as dico does."""
    import argparse

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    vae_dir = tmp_path / "vae"
    AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  layers_per_block=1).save_pretrained(vae_dir)
    network = random_network(model_spec("DiCo-S"), std=0.02)
    ckpt = tmp_path / "0400000.pt"
    torch.save({"model": network.state_dict(), "ema": network.state_dict(), "args": argparse.Namespace(model="DiCo-S")},
               ckpt)
    folder = save_pipeline(ckpt, tmp_path / "dico-s", vae=str(vae_dir), name="DiCo-S", image_size=64)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"] and index["sample_size"] == 8
    assert "official DiCo release" in (folder / "README.md").read_text()
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    labels = pipe.get_label_ids(["golden retriever", "tabby"])
    assert labels == [207, 281]
    space = OutputSpace(8, 4, vae=str(vae_dir))
    expected = generate(network, space, range(2), torch.tensor(labels), SamplingOptions(steps=3, cfg_scale=1.5, seed=0),
                        vae=pipe.vae)
    np.testing.assert_array_equal(images(pipe(labels, num_inference_steps=3, seed=0)), expected)


def test_dit_models_run_in_the_same_pipeline():
    network = random_network(model_spec("DiT-S/2", input_size=8, in_channels=1, num_classes=10, depth=2,
                                        hidden_size=64, num_heads=2))
    pipe = pipeline_from_network(network, SPACE)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.transformer, DiT2DModel)
    expected = generate(network, SPACE, range(2), torch.tensor([1, 2]), SamplingOptions(steps=5, cfg_scale=2.0, seed=1))
    np.testing.assert_array_equal(images(pipe([1, 2], guidance_scale=2.0, num_inference_steps=5, seed=1)), expected)


# ------------------------------------------------------------------------------------------ flow-matching models

FLOW = FlowObjective().to_dict()  # Linear path, velocity prediction: SiT's setting


@pytest.fixture(scope="module")
def flow_network():
    return random_network(seed=1)


@pytest.fixture(scope="module")
def flow_pipe(flow_network):
    pipe = pipeline_from_network(flow_network, SPACE, objective=FLOW)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def flow_checkpoint(flow_network, tmp_path_factory):
    """A flow-matching training checkpoint (the objective recorded as dico train records it)."""
    path = tmp_path_factory.mktemp("flow-ckpt") / "0000010.pt"
    atomic_save({"format": "dico-train/1", "model": flow_network.state_dict(), "ema": flow_network.state_dict(),
                 "spec": SPEC, "space": {"resolution": 8, "channels": 1, "vae": None, "latent_scale": 0.18215},
                 "objective": FLOW, "step": 10,
                 "config": {"model": "DiCo-Tiny", "data": None, "lr": 0.001, "global_batch": 64, "max_steps": 10,
                            "ema_decay": 0.995, "objective": "flow", "path": "Linear", "prediction": "velocity",
                            "time_sampling": "uniform"}}, path)
    return path


def dico_samples(monkeypatch, network, labels, options, objective=FLOW) -> torch.Tensor:
    """dico.sampling.generate's samples before quantisation (its last step, to_uint8, made the identity)."""
    generate_module = importlib.import_module("dico.sampling.generate")  # the module (the package exports the function)
    monkeypatch.setattr(generate_module, "to_uint8", lambda z: z.clone())
    return generate(network, SPACE, range(len(labels)), torch.tensor(labels), options, objective=objective)


def model_times(pipe, call) -> list:
    """The time argument of every model call a pipeline run makes."""
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    try:
        call()
    finally:
        handle.remove()
    return seen


def test_flow_models_get_diffusers_flow_match_euler_scheduler_by_default(flow_pipe):
    assert isinstance(flow_pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert flow_pipe.scheduler.config.shift == 1.0 and flow_pipe.scheduler.config.num_train_timesteps == 1000
    assert flow_pipe.config.objective == FLOW
    assert flow_pipe.transformer.config.learn_sigma  # the velocity is read from the first in_channels channels


def test_flow_grids_diffusers_default_ends_at_sigma_one_thousandth_dicos_at_zero():
    """The documented difference: FlowMatchEulerDiscreteScheduler's N sigmas are linspace(1, 1/1000, N) (then 0), dico's
    Euler grid with N+1 points is t = linspace(0, 1, N+1), i.e. sigmas 1 - t; flow_sigmas(N) gives dico's grid."""
    n = 6
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(n)
    np.testing.assert_allclose(scheduler.sigmas.numpy(), [*np.linspace(1, 1e-3, n), 0], atol=1e-7)
    dico_grid = time_grid(0.0, 1.0, n + 1)
    assert not torch.allclose(1 - scheduler.sigmas, dico_grid, atol=1e-3)
    scheduler.set_timesteps(sigmas=flow_sigmas(n))
    assert scheduler.timesteps.shape == (n,) and scheduler.sigmas[-1] == 0
    torch.testing.assert_close(1 - scheduler.sigmas, dico_grid, atol=6e-8, rtol=0)  # 1 - (1 - t): rounding only
    with pytest.raises(ValueError, match=r"--steps \(num_inference_steps\) must be an integer >= 1, got 0"):
        flow_sigmas(0)


@pytest.mark.parametrize("guidance, channels", [(1.0, 3), (2.0, 3), (2.5, "all")],
                         ids=["unguided", "guided-3", "guided-all"])
def test_flow_pipeline_makes_dicos_euler_samples_for_the_same_seed(flow_pipe, flow_network, monkeypatch, guidance,
                                                                   channels):
    n, labels = 6, [3, 7, 1, 0]
    options = SamplingOptions(method="euler", steps=n + 1, cfg_scale=guidance, guidance_channels=channels, seed=5)
    expected = dico_samples(monkeypatch, flow_network, labels, options)

    def run():
        return flow_pipe(labels, guidance_scale=guidance, guidance_channels=channels, num_inference_steps=n,
                         sigmas=flow_sigmas(n), seed=5, output_type="latent").images

    seen = []
    times = model_times(flow_pipe, lambda: seen.append(run()))
    got = seen[0]
    assert got.shape == expected.shape == (4, 1, 8, 8)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)
    assert float((got - expected).abs().max()) < 1e-5 < float(expected.std())  # a comparison with teeth
    # The model is called at dico's times t = k / n (0 = noise), one call per Euler step, all images at once.
    assert len(times) == n and all(t.dtype == torch.float32 and len(set(t.tolist())) == 1 for t in times)
    torch.testing.assert_close(torch.stack([t[0] for t in times]), time_grid(0.0, 1.0, n + 1)[:-1], atol=6e-8, rtol=0)
    quantised = images(flow_pipe(labels, guidance_scale=guidance, guidance_channels=channels, num_inference_steps=n,
                                 sigmas=flow_sigmas(n), seed=5))
    assert len({im.tobytes() for im in quantised}) == 4


def test_flow_pipeline_on_the_schedulers_own_grid_differs_only_by_the_grid(flow_pipe, flow_network, monkeypatch):
    """Without sigmas= the scheduler's grid (last step from sigma 1/1000 to 0) is used: close to dico's Euler run
    on that same grid (dico's time_grid cannot express it, so compare with dico's uniform grid loosely)."""
    n = 8
    default = flow_pipe([2, 5], guidance_scale=1.0, num_inference_steps=n, seed=3, output_type="latent").images
    uniform = flow_pipe([2, 5], guidance_scale=1.0, num_inference_steps=n, sigmas=flow_sigmas(n), seed=3,
                        output_type="latent").images
    assert torch.isfinite(default).all() and not torch.allclose(default, uniform, atol=1e-6)
    assert float((default - uniform).abs().max()) < 0.5 * float(uniform.abs().max())


def test_flow_pipeline_saves_and_loads_with_its_scheduler_and_objective(flow_pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    flow_pipe.save_pretrained(tmp_path / "flow")
    index = json.loads((tmp_path / "flow" / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"] and index["objective"] == FLOW
    for loaded in (DiCoPipeline.from_pretrained(tmp_path / "flow"),
                   DiffusionPipeline.from_pretrained(tmp_path / "flow", trust_remote_code=True)):
        assert type(loaded) is DiCoPipeline and isinstance(loaded.scheduler, FlowMatchEulerDiscreteScheduler)
        assert loaded.config.objective == FLOW
        loaded.set_progress_bar_config(disable=True)
        for kwargs in ({"guidance_scale": 1.0}, {"guidance_scale": 2.0, "sigmas": flow_sigmas(5)}):
            assert torch.equal(loaded([4, 2], num_inference_steps=5, seed=9, output_type="latent", **kwargs).images,
                               flow_pipe([4, 2], num_inference_steps=5, seed=9, output_type="latent", **kwargs).images)


def test_dico_convert_writes_a_flow_pipeline_that_samples_as_dico_sample(flow_checkpoint, tmp_path):
    out = tmp_path / "dico-flow"
    assert cli(["convert", str(flow_checkpoint), str(out), "--format", "diffusers"]) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"] and index["objective"] == FLOW
    card = (out / "README.md").read_text()
    for needed in ("flow matching", "path Linear, prediction velocity", "FlowMatchEulerDiscreteScheduler",
                   "| objective | flow |", "t = 1 - sigma"):
        assert needed in card, needed
    assert "learned-range" not in card and "diffusion_steps" not in card
    npz = tmp_path / "s.npz"
    assert cli(["sample", "--ckpt", str(flow_checkpoint), "--classes", "3,7", "--num-samples", "4", "--method",
                "euler", "--steps", "7", "--cfg-scale", "2", "--seed", "11", "--out", str(npz)]) == 0
    loaded = DiCoPipeline.from_pretrained(out)
    loaded.set_progress_bar_config(disable=True)
    got = images(loaded(["3", "7", "3", "7"], guidance_scale=2.0, num_inference_steps=6, sigmas=flow_sigmas(6),
                        seed=11)).astype(int)
    with np.load(npz) as f:
        expected = f["arr_0"].astype(int)
    assert got.shape == expected.shape == (4, 8, 8, 3)
    assert np.abs(got - expected).max() <= 1 and (got == expected).mean() > 0.99  # floats agree to ~1e-6


def test_flow_objectives_the_schedulers_do_not_define_are_refused():
    network = random_network()
    for objective, named in ((FlowObjective(path="GVP").to_dict(), "path 'GVP'"),
                             (FlowObjective(prediction="noise").to_dict(), "prediction 'noise'")):
        with pytest.raises(ValueError, match=f"path 'Linear' and prediction 'velocity' only.*{named}"):
            pipeline_from_network(network, SPACE, objective=objective)
        with pytest.raises(ValueError, match="path 'Linear' and prediction 'velocity' only"):
            DiCoPipeline(transformer=as_component(network), scheduler=FlowMatchEulerDiscreteScheduler(),
                         sample_size=8, objective=objective)
    with pytest.raises(ValueError, match="unknown objective 'consistency' \\(known: ddpm, flow, meanflow\\)"):
        pipeline_from_network(network, SPACE, objective={"kind": "consistency"})


def test_a_scheduler_of_the_other_kind_is_refused(flow_pipe, pipe):
    ddpm_on_flow = DiCoPipeline(**{**flow_pipe.components, "scheduler": DDPMScheduler()},
                                id2label=flow_pipe.config.id2label, sample_size=8, objective=FLOW)
    with pytest.raises(ValueError, match="needs a flow-matching scheduler"):
        ddpm_on_flow([1], num_inference_steps=2, seed=0)
    flow_on_ddpm = DiCoPipeline(**{**pipe.components, "scheduler": FlowMatchEulerDiscreteScheduler()},
                                id2label=pipe.config.id2label, sample_size=8)
    with pytest.raises(ValueError, match="this is a DDPM model"):
        flow_on_ddpm([1], num_inference_steps=2, seed=0)
    with pytest.raises(ValueError, match="takes no custom sigmas"):
        pipe([1], num_inference_steps=2, sigmas=[1.0, 0.5], seed=0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        flow_pipe([1], num_inference_steps=0, seed=0)


def test_other_flow_match_schedulers_swap_in(flow_pipe):
    heun = DiCoPipeline(**{**flow_pipe.components,
                           "scheduler": FlowMatchHeunDiscreteScheduler.from_config(flow_pipe.scheduler.config)},
                        id2label=flow_pipe.config.id2label, sample_size=8, objective=FLOW)
    heun.set_progress_bar_config(disable=True)
    times = model_times(heun, lambda: heun([1, 2], guidance_scale=2.0, num_inference_steps=4, seed=3))
    assert len(times) == 7 and float(times[0][0]) == 0.0  # Heun: two model calls per step but the last
    out = heun([1, 2], guidance_scale=2.0, num_inference_steps=4, seed=3, output_type="latent").images
    euler = flow_pipe([1, 2], guidance_scale=2.0, num_inference_steps=4, seed=3, output_type="latent").images
    assert torch.isfinite(out).all() and float((out - euler).abs().max()) < 0.5 * float(euler.abs().max())
