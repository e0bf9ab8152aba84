"""`dico extract-latents`: a thin shell over dico.data.extract_latents, with the REPA encoder it names (dico.repa)."""

from ..config import ExtractLatentsConfig
from ..data import extract_latents
from ..repa import load_encoder


def run(config: ExtractLatentsConfig) -> int:
    encoder = load_encoder(config.repa_encoder, config.image_size) if config.repa_encoder else None
    extract_latents(config.data, config.out, image_size=config.image_size, vae=config.vae,
                    batch_size=config.batch_size, num_workers=config.num_workers, dtype=config.dtype,
                    device=config.device, max_batches=config.max_batches, progress=config.progress,
                    repa_encoder=encoder, threads=config.threads, text_encoder=config.text_encoder,
                    captions=config.captions, crop=config.crop)
    return 0
