"""`dico sample`: a thin shell over `dico.sampling.sample` (flags: the fields of SampleConfig)."""

from ..config import SampleConfig
from ..sampling import sample


def run(config: SampleConfig) -> int:
    path = sample(config)
    if path is not None:
        print(f"wrote {config.num_samples} samples to {path}")
    return 0
