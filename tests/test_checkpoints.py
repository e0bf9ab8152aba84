"""Checkpoints: official and bare formats, .safetensors, the Hub cache, and refusal of unsafe or foreign files."""

import argparse
import os
import pickle

import pytest
import torch

import dico
from dico.checkpoints import CheckpointError, infer_spec, load_weights
from dico.cli import main as cli

TINY = dict(hidden_size=16, depth=[1, 1, 1, 1, 1], num_classes=10)


def tiny_state(seed):
    torch.manual_seed(seed)
    model = dico.create_model("DiCo-S", **TINY)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model.state_dict()


@pytest.fixture
def official_checkpoint(tmp_path):
    """A file in the official training format: model, ema, opt and argparse args."""
    model, ema = tiny_state(0), tiny_state(1)
    path = tmp_path / "0000100.pt"
    args = argparse.Namespace(model="DiCo-S", num_classes=10, image_size=256, global_batch_size=256)
    torch.save({"model": model, "ema": ema, "opt": {"state": {}, "param_groups": []}, "args": args}, path)
    return path, model, ema


def assert_same(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_official_training_checkpoint_gives_ema_by_default(official_checkpoint):
    path, model, ema = official_checkpoint
    assert_same(dico.load_checkpoint(path), ema)
    assert_same(dico.load_checkpoint(path, weights="model"), model)


def test_three_lines_load_an_official_checkpoint(official_checkpoint):
    path, _, ema = official_checkpoint
    model = dico.load_model(path)  # size inferred from the weights
    assert model.config.hidden_size == 16 and model.config.num_classes == 10 and not model.training
    assert_same(model.state_dict(), ema)
    named = dico.load_model(path, "DiCo-S", **TINY)
    assert_same(named.state_dict(), ema)


def test_bare_and_wrapped_state_dicts_load(tmp_path):
    state = tiny_state(2)
    path = tmp_path / "bare.pth"
    torch.save({f"module._orig_mod.{k}": v for k, v in state.items()}, path)
    assert_same(dico.load_checkpoint(path, weights="model"), state)


def test_convert_writes_safetensors_that_load_back(official_checkpoint, tmp_path, capsys):
    path, _, ema = official_checkpoint
    out = tmp_path / "tiny.safetensors"
    assert cli(["convert", str(path), str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert_same(dico.load_checkpoint(out), ema)
    assert dico.load_model(out).config.depth == [1, 1, 1, 1, 1]



def test_a_converted_file_honours_the_umask(official_checkpoint, tmp_path):
    path, _, _ = official_checkpoint
    old = os.umask(0o022)
    try:
        out = dico.checkpoints.convert(path, tmp_path / "tiny.safetensors")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644  # safetensors' writer alone makes it 0600


def test_hub_files_resolve_through_the_huggingface_cache(official_checkpoint, tmp_path, monkeypatch):
    path, _, ema = official_checkpoint
    cache = tmp_path / "hub"
    snapshot = cache / "models--shallowdream204--DiCo" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "DiCo-S-tiny.pt").write_bytes(path.read_bytes())
    (cache / "models--shallowdream204--DiCo" / "refs").mkdir()
    (cache / "models--shallowdream204--DiCo" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    assert_same(dico.load_checkpoint("shallowdream204/DiCo/DiCo-S-tiny.pt"), ema)
    with pytest.raises(FileNotFoundError, match="could not be fetched from the Hugging Face Hub"):
        dico.load_checkpoint("shallowdream204/DiCo/DiCo-XL-3750K-256x256.pt")


class Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_runs_code_is_refused_and_has_no_effect(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": torch.zeros(1)}, "x": Payload(str(marker))}, f)
    with pytest.raises(CheckpointError, match="refused to load"):
        dico.load_checkpoint(path)
    assert not marker.exists()


def test_corrupt_missing_and_foreign_files_are_clear_errors(official_checkpoint, tmp_path):
    path, _, _ = official_checkpoint
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        dico.load_checkpoint(truncated)
    with pytest.raises(FileNotFoundError, match="no such file"):
        dico.load_checkpoint(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"optimizer": {"lr": 1.0}}, foreign)
    with pytest.raises(CheckpointError, match="not a DiCo/DiT checkpoint"):
        dico.load_checkpoint(foreign)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a readable .safetensors"):
        dico.load_checkpoint(bad_st)
    with pytest.raises(CheckpointError, match="no 'ema' weights"):
        torch.save({"model": tiny_state(0)}, tmp_path / "noema.pt")
        dico.load_checkpoint(tmp_path / "noema.pt")


def test_mismatched_checkpoint_names_the_keys_and_the_size_it_looks_like():
    with torch.device("meta"):
        small = dico.create_model("DiCo-S").state_dict()
        base = dico.create_model("DiCo-B")
    with pytest.raises(CheckpointError) as err:
        load_weights(base, small, "dico-s.pt")
    assert "looks like DiCo-S (num_classes=1000, in_channels=4, learn_sigma=True)" in str(err.value)
    with torch.device("meta"):
        ten_classes = dico.create_model("DiCo-S", num_classes=10).state_dict()
        del ten_classes["final_layer.out_proj.bias"]
        ten_classes["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_weights(dico.create_model("DiCo-S"), ten_classes, "ten.pt")
    text = str(err.value)
    assert "y_embedder.embedding_table_0.weight: checkpoint (11, 128) vs model (1001, 128)" in text
    assert "missing keys: final_layer.out_proj.bias" in text and "unexpected keys: extra.weight" in text
    assert "looks like DiCo-S (num_classes=10" in text


def test_infer_spec_recognises_every_named_size():
    for name in ["DiCo-S", "DiCo-B", "DiCo-L", "DiCo-XL", "DiCo-H", "DiT-XL/2", "DiT-B/4"]:
        with torch.device("meta"):
            state = dico.create_model(name).state_dict()
        spec = infer_spec(state)
        assert spec["name"] == name
        assert spec["config"]["num_classes"] == 1000
