"""Helpers the tests share (imported by test modules and conftest alike)."""

from pathlib import Path

import torch

# The official release's tensors live in ../shared/fixtures beside the checkout (see shared/README.md).
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# A DiCo-Tiny small enough for a training step in milliseconds, and the demo recipe around it for a few steps.
TINY = {"hidden_size": 16, "depth": [1, 1, 1, 1, 1]}


def tiny_run_config(results, **overrides):
    """The digits demo preset with a tiny model, 4 steps of 8 images, checkpoints every 2 steps."""
    from dico.training import preset

    base = dict(model="DiCo-Tiny", model_overrides=TINY, results_dir=str(results), max_steps=4, global_batch=8,
                log_every=2, ckpt_every=2, num_workers=0, lr=1e-3, ema_decay=0.9, grid_classes=2,
                grid_per_class=2, grid_steps=3)
    return preset("demo", **{**base, **overrides})


def save_tiny_vae(path, latent_channels: int = 4):
    """A real diffusers AutoencoderKL, tiny and with random weights (seeded), saved as a local directory."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, latent_channels=latent_channels,
                        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    vae.save_pretrained(path)
    return path


def save_tiny_checkpoint(path, std: float = 0.0, **entries):
    """A tiny pixel-space digits-like DiCo (8x8 grey, 10 classes) saved as one of our checkpoints, with extra
    `entries`; untrained, or with every weight drawn from N(0, std^2) (seeded) so that labels change the output."""
    from dico.checkpoints import atomic_save
    from dico.models import build_model, model_spec

    spec = model_spec("DiCo-Tiny", in_channels=1, num_classes=10, **TINY)
    network = build_model(spec)
    if std:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in network.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    atomic_save({"ema": network.state_dict(), "model": network.state_dict(), "spec": spec, "step": 1,
                 "space": {"resolution": 8, "channels": 1, "vae": None, "latent_scale": 0.18215}, **entries}, path)
    return path



class no_warnings:
    """`with no_warnings():` fails the block on any warning a user would see: Python's (raised as errors where they
    are issued) and those libraries log (diffusers' logger does not propagate to the root one: watched by name)."""

    def __enter__(self):
        import logging
        import warnings

        self.logged = []
        self.watcher = logging.Handler(logging.WARNING)
        self.watcher.emit = self.logged.append
        self.loggers = [logging.getLogger(), logging.getLogger("diffusers")]
        for logger in self.loggers:
            logger.addHandler(self.watcher)
        self.caught = warnings.catch_warnings()
        self.caught.__enter__()
        warnings.simplefilter("error")
        # What Python itself hides from a command's user (warnings addressed to the developers of a library, e.g.
        # numpy 2's DeprecationWarning inside diffusers' DPMSolver) is not a warning on the user's path.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        return self

    def __exit__(self, *error):
        self.caught.__exit__(*error)
        for logger in self.loggers:
            logger.removeHandler(self.watcher)
        if error[0] is None:
            assert not self.logged, [record.getMessage() for record in self.logged]
