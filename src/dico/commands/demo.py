"""`dico demo`: serve the Gradio page of dico.demo.launch."""

from ..config import DemoConfig
from ..demo import launch


def run(options: DemoConfig) -> int:
    launch(options.ckpt, port=options.port, host=options.host, device=options.device, name=options.model,
           vae=options.vae, guide=options.guide_ckpt, guide_name=options.guide_model)
    return 0
