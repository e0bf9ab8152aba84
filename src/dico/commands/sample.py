"""`dico sample`: a thin shell over `dico.sampling.sample` (flags: the fields of SampleConfig)."""

from ..config import SampleConfig
from ..sampling import sample


def run(config: SampleConfig) -> int:
    path = sample(config)
    if path is not None:
        count = config.num_samples or "the"  # (text models with --captions: one per captioned image)
        print(f"wrote {count} samples to {path}")
    return 0
