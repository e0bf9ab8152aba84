"""Objectives as one family: records that round-trip (old ones included), settings declared once and turned into
flags, and each class's loss and samplers equal to the process it names."""

import dataclasses
import typing

import pytest
import torch

import dico
from dico.checkpoints import stored_objective
from dico.diffusion import create_diffusion
from dico.objectives import (OBJECTIVES, DDPMObjective, FlowObjective, ObjectiveOptions, objective_from_dict,
                             objective_from_options)
from dico.randomness import PURPOSES, keyed_randint, keyed_randn
from dico.training import TrainConfig
from dico.transport import create_transport


def test_records_round_trip_and_old_records_load_as_the_official_ddpm():
    for objective in (DDPMObjective(), DDPMObjective(noise_schedule="squaredcos_cap_v2", diffusion_steps=500), FlowObjective(),
                      FlowObjective(path="GVP", prediction="noise", loss_weight="likelihood", train_eps=1e-3)):
        record = objective.to_dict()
        assert list(record)[0] == "kind" and objective_from_dict(record) == objective
    # what checkpoints held before objectives were recorded, and what the official release holds (nothing)
    assert objective_from_dict(None) == objective_from_dict({}) == DDPMObjective(noise_schedule="linear", diffusion_steps=1000)
    assert DDPMObjective().to_dict() == {"kind": "ddpm", "noise_schedule": "linear", "diffusion_steps": 1000}
    assert stored_objective({"config": {"noise_schedule": "squaredcos_cap_v2", "diffusion_steps": 100}}) == \
        DDPMObjective(noise_schedule="squaredcos_cap_v2", diffusion_steps=100)
    assert stored_objective({"args": object()}) == DDPMObjective()
    with pytest.raises(ValueError, match="unknown objective 'edm' \\(known: ddpm, flow, meanflow\\)"):
        objective_from_dict({"kind": "edm"})
    with pytest.raises(ValueError, match="unknown ddpm objective fields: sigma_min"):
        objective_from_dict({"kind": "ddpm", "sigma_min": 0.1})
    with pytest.raises(ValueError, match="--diffusion-steps"):
        DDPMObjective(diffusion_steps=1)
    with pytest.raises(ValueError, match="loss weight"):  # SiT's transport refuses the combination
        FlowObjective(prediction="velocity", loss_weight="velocity")


def test_the_training_flags_are_the_objectives_settings_declared_once():
    config_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    for cls in OBJECTIVES.values():
        for f in dataclasses.fields(cls.settings):
            assert f.name in config_fields and config_fields[f.name].default == f.default
            assert hints[f.name] == typing.get_type_hints(cls.settings)[f.name]
    assert typing.get_args(hints["objective"]) == tuple(OBJECTIVES)
    assert issubclass(TrainConfig, ObjectiveOptions)
    config = TrainConfig(objective="flow", path="GVP", prediction="noise", time_sampling="logit-normal")
    assert objective_from_options(config) == FlowObjective(path="GVP", prediction="noise",
                                                           time_sampling="logit-normal")
    assert objective_from_options(TrainConfig(diffusion_steps=200)) == DDPMObjective(diffusion_steps=200)
    with pytest.raises(ValueError, match="--noise-schedule must be one of linear, squaredcos_cap_v2"):
        TrainConfig(noise_schedule="cosine")
    with pytest.raises(ValueError, match="--objective must be one of ddpm, flow"):
        TrainConfig(objective="edm")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return dico.create_model("DiCo-Tiny", hidden_size=16, depth=[1, 1, 1, 1, 1], num_classes=3, input_size=8).eval()


def test_each_loss_is_the_loss_of_the_process_it_names(model):
    x, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 1, 2])
    keys = [(7, 11, p) for p in range(3)]
    ddpm = DDPMObjective(diffusion_steps=100)
    t = keyed_randint([(k[0], PURPOSES["timestep"], *k[1:]) for k in keys], 100)
    noise = keyed_randn([(k[0], PURPOSES["noise"], *k[1:]) for k in keys], x.shape[1:])
    expected = create_diffusion("", diffusion_steps=100).training_losses(model, x, t, {"y": y}, noise=noise)["loss"]
    assert torch.equal(ddpm.loss_function(learn_sigma=True)(model, x, {"y": y}, keys), expected)
    flow = FlowObjective(time_sampling="logit-normal")
    expected = create_transport(time_sampling="logit-normal").training_losses(model, x, {"y": y}, keys=keys)["loss"]
    assert torch.equal(flow.loss_function(learn_sigma=True)(model, x, {"y": y}, keys), expected)
    assert not torch.equal(ddpm.loss_function(True)(model, x, {"y": y}, keys), expected)


def test_flow_time_maps_each_objectives_model_time_to_noise_0_data_1():
    assert DDPMObjective(diffusion_steps=1000).flow_time(1000) == 0.0  # t = T is pure noise
    assert DDPMObjective(diffusion_steps=1000).flow_time(250) == 0.75
    assert FlowObjective().flow_time(0.25) == 0.25


def test_each_objective_exports_its_own_scheduler_family():
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    from dico.pipelines import DiCoScheduler

    assert isinstance(DDPMObjective().scheduler(), DiCoScheduler)
    assert isinstance(FlowObjective().scheduler(), FlowMatchEulerDiscreteScheduler)
    DDPMObjective().check_scheduler(DDIMScheduler())
    with pytest.raises(ValueError, match="DDPM model"):
        DDPMObjective().check_scheduler(FlowMatchEulerDiscreteScheduler())
    with pytest.raises(ValueError, match="flow-matching model"):
        FlowObjective().check_scheduler(DDIMScheduler())
    with pytest.raises(ValueError, match="path 'VP'"):
        FlowObjective(path="VP").scheduler()
    assert list(FlowObjective().pipeline_samplers()) == ["Flow matching, Euler", "Flow matching, Heun"]
