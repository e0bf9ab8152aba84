"""The training state: one object writes a training checkpoint and restores it, refusing one from another run."""

import pytest
import torch

from dico.checkpoints import CheckpointError, read_checkpoint
from dico.training.state import CHECKPOINT_FORMAT, TrainingState

KEYS = ["format", "model", "ema", "opt", "step", "skipped_steps", "spec", "space", "config", "objective",
        "class_names", "data", "world"]


def make_state(seed=0, repa=False, **records):
    """A state over small modules (the object does not care what the model is), after one optimizer step."""
    torch.manual_seed(seed)
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    projector = torch.nn.Linear(2, 4) if repa else None
    params = list(model.parameters()) + (list(projector.parameters()) if repa else [])
    opt = torch.optim.AdamW(params, lr=1e-2)
    sum(p.square().sum() for p in params).backward()
    opt.step()
    fields = dict(spec={"name": "Tiny", "config": {"hidden_size": 16}}, space={"channels": 1, "size": 8},
                  config={"data": None, "seed": 0}, objective={"kind": "ddpm"}, class_names=["zero", "one"],
                  data={"dataset_size": 10, "fingerprint": "abc123"}, world=1)
    if repa:
        fields.update(repa={"weight": 0.5}, repa_projector=projector)
    return TrainingState(model=model, ema=ema, opt=opt, **{**fields, **records})


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_holds_each_field_once_in_a_fixed_order():
    assert list(make_state().state_dict()) == KEYS
    assert list(make_state(repa=True).state_dict()) == KEYS + ["repa", "repa_projector"]
    saved = make_state(step=7, skipped_steps=1).state_dict()
    assert saved["format"] == CHECKPOINT_FORMAT and saved["step"] == 7 and saved["skipped_steps"] == 1


def test_save_and_load_restore_the_modules_the_optimizer_and_the_counters(tmp_path):
    trained = make_state(seed=0, repa=True, step=7, skipped_steps=1)
    trained.save(tmp_path / "0000007.pt")
    fresh = make_state(seed=1, repa=True)
    fresh.load(read_checkpoint(tmp_path / "0000007.pt"), tmp_path / "0000007.pt")
    for name in ("model", "ema", "repa_projector"):
        assert tensors_equal(getattr(fresh, name).state_dict(), getattr(trained, name).state_dict()), name
    assert fresh.opt.state_dict()["state"][0]["step"] == trained.opt.state_dict()["state"][0]["step"]
    assert tensors_equal(fresh.opt.state_dict()["state"][0], trained.opt.state_dict()["state"][0])
    assert (fresh.step, fresh.skipped_steps) == (7, 1)


def test_older_checkpoints_without_skipped_steps_or_a_fingerprint_still_resume():
    checkpoint = make_state(step=3).state_dict()
    del checkpoint["skipped_steps"]
    checkpoint["data"] = {"dataset_size": 10}
    resumed = make_state(seed=1)
    resumed.load(checkpoint, "old.pt")
    assert (resumed.step, resumed.skipped_steps) == (3, 0)


@pytest.mark.parametrize("change, message", [
    (dict(spec={"name": "Other", "config": {}}), "old.pt holds .*but this run builds"),
    (dict(data={"dataset_size": 11, "fingerprint": "def456"}),
     r"old.pt was trained on other data \(11 samples, fingerprint def456\) than the digits \(10 samples"),
])
def test_a_checkpoint_of_another_model_or_other_data_is_refused_before_anything_loads(change, message):
    checkpoint = make_state(**change).state_dict()
    run = make_state(seed=1)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    with pytest.raises(CheckpointError, match=message):
        run.load(checkpoint, "old.pt")
    assert tensors_equal(run.model.state_dict(), before) and run.step == 0


def test_repa_runs_resume_only_checkpoints_that_hold_the_projector():
    with pytest.raises(CheckpointError, match="trained without REPA; resume it without --repa-encoder"):
        make_state(seed=1, repa=True).load(make_state().state_dict(), "old.pt")
