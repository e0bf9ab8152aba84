"""`dico convert`: a checkpoint's weights as .safetensors (dico.checkpoints.convert) or as a diffusers pipeline folder
(dico.pipelines.save_pipeline)."""

from ..checkpoints import convert
from ..config import ConvertConfig
from ..pipelines import push_to_hub, save_pipeline


def run(options: ConvertConfig) -> int:
    if options.format == "safetensors":
        print(f"wrote {convert(options.source, options.out, options.weights, overwrite=options.overwrite)}")
        return 0
    out = save_pipeline(options.source, options.out, vae=options.vae, name=options.model,
                        image_size=options.image_size, num_classes=options.num_classes, overwrite=options.overwrite)
    print(f"wrote {out}")
    if options.push_to_hub:
        print(f"uploaded to {push_to_hub(out, options.push_to_hub)}")
    return 0
