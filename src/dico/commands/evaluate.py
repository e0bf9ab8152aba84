"""`dico evaluate REF SAMPLES`: a thin shell over `dico.evaluation.evaluate` (flags: the fields of EvaluateConfig)."""

import json
from pathlib import Path

from ..config import EvaluateConfig
from ..evaluation import evaluate


def run(config: EvaluateConfig) -> int:
    result = evaluate(config.reference, config.samples, features=config.features,
                      inception_weights=config.inception_weights, batch_size=config.batch_size, device=config.device,
                      use_cache=config.cache, progress=not config.quiet, threads=config.threads)
    print(result.format())
    if config.json:
        Path(config.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0
