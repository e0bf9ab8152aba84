"""Flow matching in the trainer and the sampler: the objective travels in the checkpoint, resume stays exact, and
`dico sample` picks the transport's sampler with no extra flag."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import dico
from dico.checkpoints import load_pretrained
from dico.cli import main as cli
from dico.data import OutputSpace
from dico.sampling import SamplingOptions, generate
from dico.training import train
from dico.objectives import FlowObjective
from helpers import TINY, tiny_run_config

def flow_config(results, **overrides):
    return tiny_run_config(results, **{"objective": "flow", "time_sampling": "logit-normal", **overrides})


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("flow")
    return train(flow_config(results), progress=False, write_grid=False)


def test_the_checkpoint_records_the_flow_objective(flow_run):
    loaded = load_pretrained(flow_run)
    assert loaded.objective.to_dict() == {"kind": "flow", "path": "Linear", "prediction": "velocity", "loss_weight": None,
                                          "train_eps": None, "sample_eps": None, "time_sampling": "logit-normal",
                                          "logit_mean": 0.0, "logit_std": 1.0}


def test_flow_resume_is_exact(flow_run, tmp_path):
    train(flow_config(tmp_path, max_steps=2), progress=False, write_grid=False)
    resumed = train(flow_config(tmp_path), resume="auto", progress=False, write_grid=False)
    for which in ("model", "ema"):
        a, b = dico.load_checkpoint(resumed, which), dico.load_checkpoint(flow_run, which)
        assert all(torch.equal(a[k], b[k]) for k in a), which


def test_flow_and_ddpm_runs_differ(tmp_path):
    """Each run trains the objective it names: its first step's loss is that objective's loss on the step's batch
    and keyed draws (seed, step 0, position). The batch is known without replaying the data order, since every
    image of the folder is the same mirror-symmetric picture (the random flips change nothing), and a new model
    predicts zero (adaLN-zero), so no weights need replaying either."""
    from dico.data import build_dataset
    from dico.diffusion import create_diffusion
    from dico.randomness import PURPOSES, keyed_randint, keyed_randn
    from dico.transport import create_transport

    folder = tmp_path / "images"
    rows = np.linspace(0, 255, 8).astype(np.uint8)[:, None, None]  # brightness changes down, not across
    picture = np.ascontiguousarray(np.broadcast_to(rows, (8, 8, 3)) // np.array([1, 2, 4], np.uint8))
    for name in ("a/0", "a/1", "b/0", "b/1"):  # two classes, two copies each
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(folder / f"{name}.png")
    dataset, _ = build_dataset(str(folder), image_size=8)
    image = dataset[0][0]
    assert all(torch.equal(dataset[i][0], image) for i in range(len(dataset)))

    def first_loss(objective):
        results = tmp_path / objective
        run = train(flow_config(results, objective=objective, data=str(folder), image_size=8, max_steps=1,
                                log_every=1, ckpt_every=1), progress=False, write_grid=False)
        assert load_pretrained(run).objective.to_dict()["kind"] == objective
        return json.loads((results / "log.jsonl").read_text().splitlines()[0])["loss"]

    config = flow_config(tmp_path)
    batch = image.expand(config.global_batch, -1, -1, -1)
    keys = [(config.seed, 0, position) for position in range(config.global_batch)]
    y = {"y": torch.zeros(config.global_batch, dtype=torch.long)}
    model = dico.create_model("DiCo-Tiny", in_channels=3, num_classes=2, **TINY)
    assert torch.count_nonzero(model(batch, torch.rand(len(batch)), y["y"])) == 0  # labels and time do not matter
    transport = create_transport("Linear", "velocity", time_sampling="logit-normal")  # what flow_config names
    flow = transport.training_losses(model, batch, y, keys=keys)["loss"].mean().item()
    diffusion = create_diffusion("", learn_sigma=True)  # the official iDDPM: 1000 linear steps, learned variance
    t = keyed_randint([(k[0], PURPOSES["timestep"], *k[1:]) for k in keys], diffusion.num_timesteps)
    noise = keyed_randn([(k[0], PURPOSES["noise"], *k[1:]) for k in keys], batch.shape[1:])
    ddpm = diffusion.training_losses(model, batch, t, y, noise=noise)["loss"].mean().item()
    assert abs(flow - ddpm) > 0.1 * flow  # a run that trained the other objective cannot pass below
    assert first_loss("flow") == pytest.approx(flow, rel=1e-5)
    assert first_loss("ddpm") == pytest.approx(ddpm, rel=1e-5)


def test_sample_picks_the_transport_with_no_extra_flag(flow_run, tmp_path, capsys):
    out = tmp_path / "flow.npz"
    assert cli(["sample", "--ckpt", str(flow_run), "--method", "euler", "--steps", "5", "--num-samples", "4",
                "--cfg-scale", "2", "--classes", "1,2,3,4", "--out", str(out)]) == 0
    loaded = load_pretrained(flow_run)
    labels = torch.tensor([1, 2, 3, 4])
    options = SamplingOptions(method="euler", steps=5, cfg_scale=2.0)
    flow = generate(loaded.model, loaded.space, range(4), labels, options, objective=loaded.objective)
    with np.load(out) as f:
        assert np.array_equal(f["arr_0"], flow)
    ddpm = generate(loaded.model, loaded.space, range(4), labels, SamplingOptions(steps=5, cfg_scale=2.0))
    assert not np.array_equal(ddpm, flow)
    with pytest.raises(ValueError, match="DDPM model"):
        generate(loaded.model, loaded.space, range(1), labels[:1], options)  # euler is no DDPM method


def test_guidance_interval_switches_guidance_off_outside():
    torch.manual_seed(0)
    model = dico.create_model("DiCo-Tiny", in_channels=1, num_classes=10, **TINY).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)  # labels matter, so guidance shows
    space, objective = OutputSpace(8, 1), FlowObjective().to_dict()
    labels = torch.tensor([3, 5])
    base = dict(method="euler", steps=6, cfg_scale=3.0, seed=1)

    def sample(**changes):
        return generate(model, space, range(2), labels, SamplingOptions(**{**base, **changes}), objective=objective)

    full, none = sample(), sample(cfg_scale=1.0)
    assert not np.array_equal(full, none)
    assert np.array_equal(sample(guidance_interval=(0.999, 1.0)), none)  # no grid time inside: never guided
    assert not np.array_equal(sample(guidance_interval=(0.0, 0.5)), full)  # guided on the noisy half only
    with pytest.raises(ValueError, match="--guidance-interval"):
        SamplingOptions(guidance_interval=(0.8, 0.2))
