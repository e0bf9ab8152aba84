"""Text-to-image training and sampling: a text model trained on the digits with captions (both objectives, REPA,
bf16, gradient checkpointing, exact resume), its checkpoint's text encoder record and null context, and `dico sample`
with prompts (typed, a file, a captioned folder) into labelled grids and .npz files with a prompts array."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import dico
from dico.cli import main as cli
from dico.config import PRESETS, preset
from dico.data import build_dataset
from dico.images import save_grid
from dico.sampling.prompts import PromptConditions, read_prompts_file, text_encoder_for
from dico.training import train
from dico.training.conditions import condition_dropout, condition_overrides
from helpers import TINY

TEXT_TINY = {**TINY, "attn_head_dim": 8}  # (CrossAttn: heads of 8 channels divide the widths 16, 32, 64)


def text_config(results, **overrides):
    """The t2i-demo preset with a tiny DWC model: 4 steps of 8 images, checkpoints every 2 steps, flow matching."""
    base = dict(model="DiCo-Tiny-DWC", model_overrides=TEXT_TINY, results_dir=str(results), max_steps=4,
                global_batch=8, log_every=2, ckpt_every=2, num_workers=0, ema_decay=0.9, grid_classes=2,
                grid_per_class=2, grid_steps=3)
    return preset("t2i-demo", **{**base, **overrides})


def weights(path, which="model"):
    return dico.load_checkpoint(path, weights=which)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """Four uninterrupted flow-matching steps of a tiny DiCo-Tiny-DWC on the digits with captions."""
    results = tmp_path_factory.mktemp("t2i")
    return results, train(text_config(results), progress=False, write_grid=False)


def test_a_text_run_builds_its_model_for_the_data_and_records_the_encoder_and_null(text_run):
    _, final = text_run
    ckpt = torch.load(final, weights_only=True)
    _, facts = build_dataset("digits-text")
    assert ckpt["spec"]["name"] == "DiCo-Tiny-DWC"
    assert (ckpt["spec"]["config"]["context_length"], ckpt["spec"]["config"]["context_dim"]) == (77, 64)
    assert ckpt["text_encoder"] == facts.text_encoder and ckpt["text_encoder"]["name"] == "dico:digits-clip"
    assert torch.equal(ckpt["null_context"], facts.null_context)  # the empty caption's tokens, what guidance uses
    assert ckpt["config"]["caption_dropout"] == 0.1 and ckpt["objective"]["kind"] == "flow"
    model = dico.load_model(final)
    assert model(torch.zeros(2, 1, 8, 8), torch.zeros(2), context=facts.null_context.expand(2, 77, 64)).shape == \
        (2, 2, 8, 8)  # (learn_sigma, as DiCo: a variance channel beside the output)


@pytest.mark.parametrize("objective", ["flow", "ddpm"])
def test_resuming_a_text_run_equals_the_uninterrupted_run(objective, text_run, tmp_path):
    reference = text_run[1] if objective == "flow" else train(text_config(tmp_path / "ref", objective=objective),
                                                              progress=False, write_grid=False)
    train(text_config(tmp_path / "run", objective=objective, max_steps=2), progress=False, write_grid=False)
    resumed = train(text_config(tmp_path / "run", objective=objective), resume="auto", progress=False,
                    write_grid=False)
    for which in ("model", "ema"):
        a, b = weights(resumed, which), weights(reference, which)
        assert all(torch.equal(a[k], b[k]) for k in a), which


def test_caption_dropout_is_the_runs_and_label_dropout_the_models():
    _, text = build_dataset("digits-text")
    _, digits = build_dataset("digits")
    spec = dico.models.model_spec("DiCo-Tiny", num_classes=10)
    assert condition_dropout(spec, text, 0.25) == 0.25
    assert condition_dropout(spec, digits, 0.25) == 0.1  # class data: the model's class_dropout_prob, as always
    assert condition_overrides("DiCo-S-CrossAttn", text) == {"context_length": 77, "context_dim": 64}
    assert condition_overrides("DiCo-S", digits) == {"num_classes": 10}


def test_caption_dropout_changes_training_and_is_checked(tmp_path):
    a = train(text_config(tmp_path / "a", max_steps=2, caption_dropout=0.0), progress=False, write_grid=False)
    b = train(text_config(tmp_path / "b", max_steps=2, caption_dropout=0.5), progress=False, write_grid=False)
    wa, wb = weights(a), weights(b)
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ValueError, match="caption_dropout"):
        text_config(tmp_path / "c", caption_dropout=1.5)


@pytest.mark.parametrize("model, data, message", [
    ("DiCo-Tiny", "digits-text", "DiCo-Tiny is a class-conditional model and the data is captioned"),
    ("DiCo-Tiny-DWC", None, "DiCo-Tiny-DWC is a text-conditioned model and the data has no captions"),
])
def test_a_model_of_the_other_kind_is_refused_in_one_line_before_anything_is_written(model, data, message, tmp_path,
                                                                                      capsys):
    results = tmp_path / "run"
    data_flag = ["--data", data or "digits"]
    assert cli(["train", "--preset", "t2i-demo", "--model", model, *data_flag, "--results-dir", str(results),
                "--max-steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not results.exists()


def test_text_models_train_with_repa_bf16_and_gradient_checkpointing(tmp_path):
    final = train(text_config(tmp_path / "repa", model="DiCo-Tiny-CrossAttn", max_steps=2, repa_encoder="digits",
                              repa_projector_dim=16, precision="bf16"), progress=False, write_grid=False)
    ckpt = torch.load(final, weights_only=True)
    assert "repa_projector" in ckpt and ckpt["text_encoder"]["name"] == "dico:digits-clip"
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    plain = train(text_config(tmp_path / "plain", max_steps=2), progress=False, write_grid=False)
    recomputed = train(text_config(tmp_path / "ckpt", max_steps=2, grad_checkpointing=True), progress=False,
                       write_grid=False)
    a, b = weights(plain), weights(recomputed)
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)


def test_mmdit_trains_on_the_digits_with_captions(tmp_path):
    final = train(text_config(tmp_path, model="MMDiT", model_overrides={"depth": 2, "patch_size": 2}, max_steps=2),
                  progress=False, write_grid=False)
    spec = torch.load(final, weights_only=True)["spec"]
    assert spec["config"]["input_size"] == 8 and spec["config"]["context_dim"] == 64


def test_the_final_grid_of_a_text_run_has_one_labelled_row_per_prompt(tmp_path, capsys):
    train(text_config(tmp_path, max_steps=1, grid_classes=10, grid_per_class=3), progress=False)
    assert f"sample grid (one row per prompt): {tmp_path / 'samples.png'}" in capsys.readouterr().out
    grid = np.asarray(Image.open(tmp_path / "samples.png"))
    assert grid.shape[0] == 10 * 34 + 2  # ten rows (one per digit) of 8x8 samples shown at 32 px
    assert grid.shape[1] > 3 * 34 + 2 + 40  # and a column of prompts beside them
    assert (grid[:, :40] < 128).any()  # ... written in dark type


def test_presets_say_where_their_values_come_from():
    coco = preset("coco")
    assert (coco.model, coco.lr, coco.global_batch, coco.max_steps, coco.caption_dropout) == \
        ("DiCo-L-DWC", 1e-4, 256, 150_000, 0.1)
    assert (coco.objective, coco.path, coco.prediction) == ("flow", "Linear", "velocity")  # REPA's t2i objective
    demo = preset("t2i-demo")
    assert demo.data == "digits-text" and dico.models.model_spec(demo.model)["config"]["context_dim"]
    assert {"t2i-demo", "coco"} <= set(PRESETS)


@pytest.fixture(scope="module")
def text_ckpt(text_run):
    return text_run[1]


def test_sample_cycles_prompts_into_a_labelled_grid_and_an_npz_with_prompts(text_ckpt, tmp_path, capsys):
    png, npz = tmp_path / "g.png", tmp_path / "s.npz"
    assert cli(["sample", "--ckpt", str(text_ckpt), "--prompt", "three", "--prompt", "a handwritten 7", "--steps", "3",
                "--num-samples", "4", "--nrow", "2", "--cfg-scale", "2", "--out", str(png)]) == 0
    grid = np.asarray(Image.open(png))
    assert grid.shape[0] > 2 * 34  # two rows of 32 px images, each with its prompt under it
    args = ["sample", "--ckpt", str(text_ckpt), "--prompt", "three", "--prompt", "a handwritten 7", "--steps", "3",
            "--num-samples", "5", "--cfg-scale", "2", "--out", str(npz)]
    assert cli(args + ["--batch-size", "2"]) == 0
    with np.load(npz) as f:
        assert "arr_1" not in f.files  # text samples have prompts, not class labels
        assert f["prompts"].dtype.kind == "U"
        assert f["prompts"].tolist() == ["three", "a handwritten 7", "three", "a handwritten 7", "three"]
        first = f["arr_0"]
    assert first.shape == (5, 8, 8, 3)
    assert cli(args + ["--batch-size", "2"]) == 0 and "already complete" in capsys.readouterr().out
    assert cli(args + ["--batch-size", "5", "--overwrite"]) == 0  # keyed per image: the batch does not matter
    with np.load(npz) as f:
        assert np.array_equal(f["arr_0"], first)
    assert not np.array_equal(first[0], first[1])  # different prompts (and noise) give different images


def test_prompts_files_and_captioned_folders(text_ckpt, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\n\n  the digit 2 \n")
    assert read_prompts_file(prompts) == ["one", "the digit 2"]
    out = tmp_path / "f.npz"
    assert cli(["sample", "--ckpt", str(text_ckpt), "--prompts-file", str(prompts), "--steps", "2",
                "--num-samples", "3", "--out", str(out)]) == 0
    with np.load(out) as f:
        assert f["prompts"].tolist() == ["one", "the digit 2", "one"]
    folder = tmp_path / "captioned"
    folder.mkdir()
    rows = []
    for k in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(folder / f"{k}.png")
        rows.append({"file_name": f"{k}.png", "text": [f"the digit {k}", f"a handwritten {k}"]})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "c.npz"
    assert cli(["sample", "--ckpt", str(text_ckpt), "--captions", str(folder), "--steps", "2", "--out", str(out)]) == 0
    with np.load(out) as f:  # one sample per captioned image, each with one of its captions
        assert len(f["arr_0"]) == 3
        assert [p.split()[-1] for p in f["prompts"].tolist()] == ["0", "1", "2"]


def test_bad_prompt_input_gets_one_line(text_ckpt, tmp_path, capsys):
    class_ckpt = train(text_config(tmp_path / "class", model="DiCo-Tiny", model_overrides=TINY, data=None,
                                   max_steps=1), progress=False, write_grid=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    cases = [
        ([str(class_ckpt), "--prompt", "three"], "--prompt needs a text-conditioned model"),
        ([str(text_ckpt), "--classes", "3"], "--classes needs a class-conditional model"),
        ([str(text_ckpt), "--prompts-file", str(empty)], "holds no prompts"),
        ([str(text_ckpt)], "a text-conditioned model needs prompts"),
        ([str(text_ckpt), "--prompt", "3", "--prompts-file", str(empty)], "give one source of prompts"),
    ]
    for args, message in cases:
        out = tmp_path / "x.png"
        assert cli(["sample", "--ckpt", *args, "--steps", "2", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not out.exists()


def test_prompt_conditions_use_the_recorded_null_and_refuse_an_encoder_of_another_width(text_ckpt):
    ckpt = torch.load(text_ckpt, weights_only=True)
    model = dico.load_model(text_ckpt)
    encoder = text_encoder_for(ckpt["text_encoder"])
    conditions = PromptConditions(encoder, ["3", "three"], ckpt["null_context"], model)
    tokens = conditions([0, 1, 2])
    assert torch.equal(tokens.context[0], tokens.context[2]) and not torch.equal(tokens.context[0], tokens.context[1])
    assert torch.equal(tokens.null().context[0], ckpt["null_context"])
    with pytest.raises(ValueError, match="use the text encoder it was trained with"):
        PromptConditions(encoder, ["3"], torch.zeros(77, 32), model)


def test_grid_labels_go_beside_rows_that_share_one_else_under_each_image(tmp_path):
    images = np.zeros((4, 8, 8, 3), np.uint8)
    plain = np.asarray(Image.open(save_grid(images, tmp_path / "p.png", nrow=2)))
    rows = np.asarray(Image.open(save_grid(images, tmp_path / "r.png", nrow=2, labels=["a", "a", "b", "b"])))
    each = np.asarray(Image.open(save_grid(images, tmp_path / "e.png", nrow=2, labels=["a", "b", "a", "b"])))
    assert rows.shape[0] == plain.shape[0] and rows.shape[1] > plain.shape[1]  # a label column
    assert each.shape[0] > plain.shape[0]  # a line of text under each image
    long = np.asarray(Image.open(save_grid(images, tmp_path / "l.png", nrow=2, labels=["word " * 80] * 2 + ["x"] * 2)))
    assert long.shape[1] < 2 * 170 + 10  # long prompts wrap (at most 160 px a line) rather than widen the grid
