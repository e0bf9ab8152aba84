"""Loading the guide model of autoguidance (`dico sample --guide-ckpt`, the pipeline, the web demo).

A guide is any checkpoint the main model could be: ours, an official file, a Hub file. Guidance mixes the two
models' predictions of the same noisy sample, so what they predict must mean the same thing: the same objective
(the same noise process or path: the same record), the same output space (channels, resolution, latent statistics)
and the same classes (or text encoder). Size, depth, training length and dtype may differ: that is the point.
"""

from ..checkpoints import CheckpointError, Pretrained, load_pretrained
from .guided import check_guide_model


def check_guide(main: Pretrained, guide: Pretrained) -> None:
    """Refuse a guide that cannot guide `main`, in one line naming what differs."""
    def differs(what, ours, theirs):
        return CheckpointError(f"the guide {guide.source} cannot guide {main.source}: {what} differs "
                               f"({theirs} vs {ours})")

    ours, theirs = main.objective.to_dict(), guide.objective.to_dict()
    if ours != theirs:
        keys = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise differs("the objective", ", ".join(f"{k}={ours.get(k)}" for k in keys),
                      ", ".join(f"{k}={theirs.get(k)}" for k in keys))
    space, guide_space = main.output_space(), guide.output_space()
    for field in ("channels", "resolution", "latent_scale", "latent_mean", "latent_std"):
        if getattr(space, field) != getattr(guide_space, field):
            raise differs(f"the output space's {field}", getattr(space, field), getattr(guide_space, field))
    if (space.vae is None) != (guide_space.vae is None):
        raise differs("the output space", "latents" if space.vae else "pixels", "latents" if guide_space.vae
                      else "pixels")
    names, guide_names = main.checkpoint.get("class_names"), guide.checkpoint.get("class_names")
    if names and guide_names and list(names) != list(guide_names):  # files that record none (official) pass
        raise differs("the class names", names[:5], guide_names[:5])
    encoder, guide_encoder = main.checkpoint.get("text_encoder"), guide.checkpoint.get("text_encoder")
    if isinstance(encoder, dict) and isinstance(guide_encoder, dict) and \
            encoder.get("name") != guide_encoder.get("name"):  # the prompts must mean the same to both
        raise differs("the text encoder", encoder.get("name"), guide_encoder.get("name"))
    try:
        check_guide_model(main.model, guide.model)
    except ValueError as err:
        raise CheckpointError(f"the guide {guide.source} cannot guide {main.source}: {err}") from err


def load_guide(source, main: Pretrained, name: str | None = None, weights: str = "ema", image_size: int = 256,
               vae=None, num_classes: int | None = None) -> Pretrained:
    """The guide model `source` holds (loaded as `load_pretrained` loads the main model: official files are inferred
    from their weights, `name` names one), checked against `main` (see `check_guide`)."""
    guide = load_pretrained(source, name, weights, image_size, vae, num_classes)
    check_guide(main, guide)
    return guide
