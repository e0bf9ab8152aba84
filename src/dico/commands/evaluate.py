"""`dico evaluate REF SAMPLES`: a thin shell over `dico.evaluation.evaluate` (flags: the fields of EvaluateConfig)."""

import json

from ..cache import atomic_write
from ..config import EvaluateConfig
from ..evaluation import evaluate
from ..options import check_new_output


def run(config: EvaluateConfig) -> int:
    if config.json:
        check_new_output(config.json, config.overwrite, "json")  # before the evaluation, not after
    result = evaluate(config.reference, config.samples, features=config.features,
                      inception_weights=config.inception_weights, batch_size=config.batch_size, device=config.device,
                      use_cache=config.cache, progress=not config.quiet, threads=config.threads,
                      reference_size=config.reference_size, reference_crop=config.reference_crop,
                      clip_model=config.clip_model)
    print(result.format())
    if config.json:
        text = json.dumps(result.to_dict(), indent=2) + "\n"
        atomic_write(config.json, lambda partial: partial.write_text(text))
    return 0
