"""What `dico demo` takes: the model to serve and where."""

from dataclasses import dataclass


@dataclass
class DemoConfig:
    """Serve a web page that samples a model: classes by name (a text model: a box of prompts), number of images,
    guidance, steps, sampler, seed.
    Needs the web demo's extra: pip install 'dico-diffusion[demo]'."""

    ckpt: str  # a checkpoint (ours, official, a Hub file) or a pipeline folder from dico convert
    port: int = 7860  # must be free: a port in use is an error, never a silent move to another one
    host: str = "127.0.0.1"  # 0.0.0.0 serves other machines too
    model: str | None = None  # official checkpoints: the model name (inferred when left out)
    vae: str | None = None  # latent models: ema | mse | a Hub id | a local VAE folder
    device: str | None = None  # cpu, cuda, ... (None: the local GPU if any)
    guide_ckpt: str | None = None
    """Autoguidance: a guide checkpoint or pipeline folder (smaller or less trained, same objective, space and
    classes); the page's guidance scale then guides away from it instead of from the null class."""
    guide_model: str | None = None  # official guide checkpoints: the model name (inferred when left out)
