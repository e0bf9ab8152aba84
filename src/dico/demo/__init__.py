"""`dico demo`: a Gradio web page that samples a dico model (pick classes by name, see a gallery)."""

from .app import build_demo, generate_images, launch

__all__ = ["build_demo", "generate_images", "launch"]
