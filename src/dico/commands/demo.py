"""`dico demo`: serve the Gradio page of dico.demo.launch."""

from ..config import DemoConfig
from ..demo import launch


def run(options: DemoConfig) -> int:
    launch(options.ckpt, port=options.port, host=options.host, device=options.device, name=options.model,
           vae=options.vae)
    return 0
