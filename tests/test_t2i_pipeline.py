"""`DiCoPipeline(prompt=...)`: text-to-image models in diffusers, holding `text_encoder` and `tokenizer` as diffusers'
text-to-image pipelines do, and `dico convert --format diffusers` for them.

Tiny pixel-space text models (8x8 grey) with random weights and a tiny CLIP text tower (CLIP's real tokenizer,
random weights) go through the same loading code as real ones; nothing is downloaded. Samples are compared before
quantisation (`output_type="latent"`): a random model's few-step samples mostly clip to 0 or 255 as pixels.
"""

import json

import numpy as np
import pytest
import torch

from clip_helpers import save_tiny_text_checkpoint
from dico.cli import main as cli
from dico.conditioning import TextTokens
from dico.config import SamplingOptions
from dico.objectives import objective_from_dict
from dico.pipelines import DiCoPipeline, load_pipeline
from dico.sampling.guided import sample_latents
from dico.text import load_text_encoder

PROMPTS = ["three", "a handwritten 7", "the digit 0"]


def dico_samples(model, cond, **options) -> torch.Tensor:
    """dico's sampler (what `dico sample` runs) for images 0..N-1 of `cond`, before decoding."""
    return sample_latents(model, objective_from_dict(None), cond, SamplingOptions(**options), range(len(cond)),
                          (1, 8, 8), "cpu")


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    return tmp_path_factory.mktemp("tower") / "tiny-clip"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tower):
    return save_tiny_text_checkpoint(tmp_path_factory.mktemp("ckpt") / "0000001.pt", tower)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, checkpoint):
    """The checkpoint converted as a user converts it."""
    out = tmp_path_factory.mktemp("converted") / "dico-text"
    assert cli(["convert", str(checkpoint), str(out), "--format", "diffusers"]) == 0
    return out


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def samples(pipe, *args, **kwargs) -> torch.Tensor:
    return pipe(*args, output_type="latent", **kwargs).images


def test_text_pipeline_makes_the_images_of_dico_sampling_with_the_text_encoder_s_conditioning(checkpoint, tower):
    """Image i of `pipe(prompt=..., seed=s)` is dico's sampler's image i for the same seed, given the prompts as
    dico.text.TextEncoder.conditioning embeds them (the empty caption as the null)."""
    pipe = quiet(load_pipeline(checkpoint))
    assert pipe.is_text and pipe.config.id2label == {} and pipe.config.text_length == 77
    for guidance, method in ((1.0, "ddpm"), (2.5, "ddpm"), (2.5, "ddim")):
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, sampler=method)
        got = samples(pipe, prompt=PROMPTS, guidance_scale=guidance, num_inference_steps=6, seed=4)
        cond = load_text_encoder(tower).conditioning(PROMPTS)
        expected = dico_samples(pipe.transformer, cond, method=method, steps=6, cfg_scale=guidance, seed=4)
        assert torch.equal(got, expected)
        assert len({image.numpy().tobytes() for image in got}) == 3
    # diffusers' way of calling a text-to-image pipeline: the prompt first.
    assert torch.equal(samples(pipe, PROMPTS, guidance_scale=2.5, num_inference_steps=6, seed=4), got)
    # As pictures: dico's quantisation of those samples.
    images = np.stack([np.asarray(image) for image in pipe(PROMPTS, guidance_scale=2.5, num_inference_steps=6,
                                                           seed=4).images])
    from dico.images import to_uint8

    np.testing.assert_array_equal(images[..., 0], to_uint8(got)[..., 0])


def test_negative_prompt_is_the_null_guidance_contrasts_with(checkpoint, tower):
    pipe = quiet(load_pipeline(checkpoint))
    call = dict(prompt=PROMPTS[:2], guidance_scale=3.0, num_inference_steps=5, seed=1)
    default = samples(pipe, **call)
    assert torch.equal(samples(pipe, **call, negative_prompt=""), default)  # the empty caption
    other = samples(pipe, **call, negative_prompt="blurry")
    encoder = load_text_encoder(tower)
    cond = TextTokens(encoder.encode(PROMPTS[:2]), encoder.encode(["blurry"])[0])
    assert torch.equal(other, dico_samples(pipe.transformer, cond, steps=5, cfg_scale=3.0, seed=1))
    assert not torch.equal(other, default)
    # Without guidance the null is never used.
    plain = dict(call, guidance_scale=1.0)
    assert torch.equal(samples(pipe, **plain, negative_prompt="blurry"), samples(pipe, **plain))


def test_convert_writes_text_encoder_and_tokenizer_and_the_folder_loads_back_the_same(folder, checkpoint):
    index = json.loads((folder / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"][0] == "transformers" and "CLIPTokenizer" in index["tokenizer"][1]
    assert index["transformer"] == ["dico.pipelines.models", "TextDiCo2DModel"]
    assert (folder / "text_encoder" / "model.safetensors").is_file()
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    assert index["text_length"] == 77 and index["text_attention_mask"] is False and index["id2label"] == {}
    loaded = quiet(DiCoPipeline.from_pretrained(folder))
    direct = quiet(load_pipeline(checkpoint))
    call = dict(prompt=PROMPTS, guidance_scale=2.0, num_inference_steps=5, seed=7)
    assert torch.equal(samples(loaded, **call), samples(direct, **call))
    # The tokenizer came back as it was written: CLIP's ids for a prompt.
    assert loaded.tokenizer("a cat")["input_ids"] == [49406, 320, 2368, 49407]
    card = (folder / "README.md").read_text()
    assert "- text-to-image" in card and "pipe(prompt=" in card and "class_labels" not in card
    assert "CLIPTextModel" in card and "77 tokens" in card


def test_diffusers_generic_loader_reads_the_text_folder_offline(folder, checkpoint, monkeypatch):
    from diffusers import DiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = quiet(DiffusionPipeline.from_pretrained(folder, trust_remote_code=True))
    assert type(pipe).__name__ == "DiCoPipeline" and type(pipe.text_encoder).__name__ == "CLIPTextModel"
    call = dict(prompt=PROMPTS[:1], guidance_scale=2.0, num_inference_steps=4, seed=2)
    assert torch.equal(samples(pipe, **call), samples(quiet(load_pipeline(checkpoint)), **call))


def test_mmdit_converts_and_samples_the_same_way(tmp_path, tower):
    checkpoint = save_tiny_text_checkpoint(tmp_path / "mmdit.pt", tower, model="MMDiT", depth=1)
    assert cli(["convert", str(checkpoint), str(tmp_path / "mmdit"), "--format", "diffusers"]) == 0
    loaded = quiet(DiCoPipeline.from_pretrained(tmp_path / "mmdit"))
    assert type(loaded.transformer).__name__ == "MMDiT2DModel"
    call = dict(prompt=PROMPTS[:2], guidance_scale=2.0, num_inference_steps=4, seed=3)
    cond = load_text_encoder(tower).conditioning(PROMPTS[:2])
    assert torch.equal(samples(loaded, **call), dico_samples(loaded.transformer, cond, steps=4, cfg_scale=2.0, seed=3))


def test_an_empty_caption_stored_in_float16_is_the_pipeline_s_null_too(tmp_path, tower):
    """Training records its null, the empty caption's tokens; extracted latents folders store tokens in float16. The
    converted pipeline rounds its empty caption the same way, so it guides towards the null the model was trained
    and `dico sample` samples with."""
    half = save_tiny_text_checkpoint(tmp_path / "half.pt", tower, null=lambda encoder: encoder.null().half())
    full = save_tiny_text_checkpoint(tmp_path / "full.pt", tower, null=lambda encoder: encoder.null())
    assert load_pipeline(full).config.text_null_dtype is None
    assert cli(["convert", str(half), str(tmp_path / "half"), "--format", "diffusers"]) == 0
    pipe = quiet(DiCoPipeline.from_pretrained(tmp_path / "half"))
    assert pipe.config.text_null_dtype == "float16"
    encoder = load_text_encoder(tower)
    recorded = torch.load(half, weights_only=False)["null_context"].float()
    assert not torch.equal(recorded, encoder.null())  # the rounding is real
    call = dict(prompt=PROMPTS[:2], guidance_scale=3.0, num_inference_steps=4, seed=6)
    expected = dico_samples(pipe.transformer, TextTokens(encoder.encode(PROMPTS[:2]), recorded), steps=4,
                            cfg_scale=3.0, seed=6)
    assert torch.equal(samples(pipe, **call), expected)
    assert torch.equal(samples(pipe, **call, negative_prompt=""), expected)
    # A recorded null that is no empty caption of this encoder: not the encoder the model was trained with.
    other = save_tiny_text_checkpoint(tmp_path / "other.pt", tower, null=lambda encoder: encoder.encode(["x"])[0])
    with pytest.raises(ValueError, match="not the encoder the model was trained with"):
        load_pipeline(other)


def test_wrong_inputs_are_one_line_errors(checkpoint, tmp_path, capsys):
    pipe = load_pipeline(checkpoint)
    for kwargs, message in [
        (dict(), "prompt is required: this model is text-conditioned"),
        (dict(prompt=[]), "prompt is empty"),
        (dict(prompt=["a", 3]), "prompt must be a string or a list of strings"),
        (dict(prompt="a", negative_prompt=["x", "y"]), "negative_prompt must be one string"),
        (dict(class_labels=["a"], prompt="b"), "pass prompt, not class_labels"),
    ]:
        with pytest.raises(ValueError, match=message):
            pipe(num_inference_steps=2, **kwargs)
    from helpers import save_tiny_checkpoint

    class_pipe = load_pipeline(save_tiny_checkpoint(tmp_path / "class.pt", class_names=[str(d) for d in range(10)]))
    assert not class_pipe.is_text
    with pytest.raises(ValueError, match="class-conditional: pass class_labels"):
        class_pipe(prompt="three", num_inference_steps=2)
    with pytest.raises(ValueError, match="takes no text_encoder or tokenizer"):
        DiCoPipeline(**{**class_pipe.components, "text_encoder": pipe.text_encoder, "tokenizer": pipe.tokenizer},
                     sample_size=8)
    with pytest.raises(ValueError, match="needs its text_encoder and tokenizer"):
        DiCoPipeline(**{**pipe.components, "text_encoder": None}, sample_size=8)
    # A text checkpoint that does not say which text encoder it was trained with cannot become a pipeline.
    record = torch.load(checkpoint, weights_only=False)
    del record["text_encoder"]
    torch.save(record, tmp_path / "anonymous.pt")
    capsys.readouterr()
    assert cli(["convert", str(tmp_path / "anonymous.pt"), str(tmp_path / "out"), "--format", "diffusers"]) == 2
    err = capsys.readouterr().err
    assert "does not record its text encoder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_converted_folder_makes_the_images_of_dico_sample_prompt_and_evaluate_reads_their_prompts(
        folder, checkpoint, tmp_path, tmp_path_factory, capsys):
    """The chain a user runs: `dico sample --prompt` writes an .npz whose prompts `dico evaluate --clip-model` reads,
    and the converted pipeline gives the same pictures for the same prompts and seed."""
    from clip_helpers import save_tiny_clip

    npz = tmp_path / "samples.npz"
    assert cli(["sample", "--ckpt", str(checkpoint), "--prompt", "three", "--prompt", "a handwritten 7",
                "--num-samples", "4", "--steps", "6", "--cfg-scale", "2", "--seed", "9", "--out", str(npz)]) == 0
    with np.load(npz) as f:
        sampled, prompts = f["arr_0"], list(f["prompts"])
    assert prompts == ["three", "a handwritten 7", "three", "a handwritten 7"]
    pipe = quiet(DiCoPipeline.from_pretrained(folder))
    got = np.stack([np.asarray(image) for image in pipe(prompt=prompts, guidance_scale=2.0, num_inference_steps=6,
                                                        seed=9).images])
    np.testing.assert_array_equal(got, sampled)
    assert len({image.tobytes() for image in sampled}) == 4
    clip = save_tiny_clip(tmp_path_factory.mktemp("clip"), seed=4)
    reference = tmp_path / "reference.npz"
    np.savez(reference, np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    capsys.readouterr()
    assert cli(["evaluate", str(reference), str(npz), "--features", "digits", "--device", "cpu", "--quiet",
                "--clip-model", str(clip)]) == 0
    assert "CLIP score" in capsys.readouterr().out


def test_a_text_checkpoint_converted_to_safetensors_keeps_its_text_encoder_and_null(tmp_path, tower):
    """`dico convert CKPT model.safetensors` carries what prompts need: the encoder record (metadata) and training's
    null (a tensor beside the weights, not among them), so the file samples and converts as the checkpoint does."""
    from dico.checkpoints import load_checkpoint, read_checkpoint

    checkpoint = save_tiny_text_checkpoint(tmp_path / "half.pt", tower, null=lambda encoder: encoder.null().half())
    assert cli(["convert", str(checkpoint), str(tmp_path / "model.safetensors")]) == 0
    stored, original = read_checkpoint(tmp_path / "model.safetensors"), torch.load(checkpoint, weights_only=False)
    assert stored["text_encoder"] == original["text_encoder"]
    assert torch.equal(stored["null_context"], original["null_context"])
    assert set(load_checkpoint(tmp_path / "model.safetensors")) == set(original["ema"])
    call = dict(prompt=PROMPTS[:2], guidance_scale=2.0, num_inference_steps=4, seed=8)
    from_file, from_checkpoint = quiet(load_pipeline(tmp_path / "model.safetensors")), quiet(load_pipeline(checkpoint))
    assert from_file.config.text_null_dtype == "float16"
    assert torch.equal(samples(from_file, **call), samples(from_checkpoint, **call))
    npz = tmp_path / "from-file.npz"
    assert cli(["sample", "--ckpt", str(tmp_path / "model.safetensors"), "--prompt", "three", "--num-samples", "2",
                "--steps", "3", "--out", str(npz)]) == 0
    with np.load(npz) as f:
        assert list(f["prompts"]) == ["three", "three"]
