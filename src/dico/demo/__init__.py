"""`dico demo`: a Gradio web page that samples a dico model (pick classes by name, see a gallery).

Gradio is an extra (`[demo]`): without it, importing this package raises dico.extras.MissingExtra, one line that says
what to install."""

from ..extras import require

require("gradio", "demo", "the web demo")

from .app import build_demo, generate_images, launch  # noqa: E402

__all__ = ["build_demo", "generate_images", "launch"]
