"""dico in diffusers: the networks as model components, dico's sampler as a scheduler, and `DiCoPipeline`.

    from dico.pipelines import DiCoPipeline
    pipe = DiCoPipeline.from_pretrained("dico-digits")          # a folder written by save_pipeline / dico convert
    images = pipe(class_labels=pipe.get_label_ids(["3", "7"]), seed=0).images

Only this package imports diffusers (about 1.5 s), so `import dico` stays fast.
"""

from .export import (check_guide_pipeline, imagenet_labels, load_guide_pipeline, load_pipeline, model_card,
                     pipeline_from_network, push_to_hub, save_pipeline)
from .models import DiCo2DModel, DiT2DModel, MMDiT2DModel, TextDiCo2DModel, as_component
from .pipeline import DiCoPipeline, flow_sigmas
from .scheduler import DiCoScheduler  # (imported through the module that older pipeline folders name)

__all__ = ["DiCo2DModel", "DiT2DModel", "DiCoPipeline", "DiCoScheduler", "as_component", "flow_sigmas",
           "imagenet_labels", "load_pipeline", "model_card", "pipeline_from_network", "push_to_hub", "save_pipeline",
           "TextDiCo2DModel", "MMDiT2DModel",
           "check_guide_pipeline", "load_guide_pipeline"]
