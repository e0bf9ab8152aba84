"""`dico demo`: serve the Gradio page of dico.demo.launch."""

from ..config import DemoConfig
from ..demo import launch


def run(options: DemoConfig) -> int:
    if not 0 < options.port < 65536:
        raise ValueError(f"--port must lie in 1..65535, got {options.port}")
    launch(options.ckpt, port=options.port, host=options.host, device=options.device, name=options.model,
           vae=options.vae)
    return 0
