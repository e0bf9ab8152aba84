"""What `dico ema reconstruct` and `dico ema sweep` take: a run's power-function EMA snapshots and the profile(s) to
rebuild from them (dico.training.phema)."""

from dataclasses import dataclass
from typing import Annotated, Literal

from tyro import MISSING
from tyro.conf import Positional, arg

from ..options import check_int, comma_separated
from ..threads import Threads, check_threads
from .sampling import SamplingOptions
from .training import check_phema_stds

RunDir = Annotated[Positional[str], arg(metavar="RUN_DIR")]  # a run folder written with --phema-stds (or its phema/)
SigmaRels = Annotated[tuple[float, ...], comma_separated(float, "S1,S2,...")]


@dataclass
class ReconstructConfig:
    """Rebuild the EMA of profile --sigma-rel at --step (default: the newest snapshot) from the run's snapshots at or
    before it (least squares over the profiles, EDM2's Algorithm 3), and write it as a checkpoint whose "ema" weights
    `dico sample`, `dico convert` and the pipeline read."""

    run_dir: RunDir  # a run folder trained with --phema-stds (or its phema/ folder)
    sigma_rel: float  # the profile to rebuild: its width relative to the training time, in (0, 0.2887)
    out: str  # the checkpoint to write (.pt)
    step: int | None = None  # rebuild the EMA as of this step (None: the newest snapshot's)
    inputs: Annotated[tuple[float, ...] | None, comma_separated(float, "S1,S2,...")] = None
    """Use only the snapshots of these tracked profiles (None: all)."""
    overwrite: bool = False  # replace an existing --out

    def __post_init__(self):
        if self.sigma_rel is not MISSING:  # (not while the flag parser builds its defaults, before the flags are read)
            check_phema_stds([self.sigma_rel], "sigma-rel")
        check_int("step", self.step, 1, none_ok=True)
        if self.inputs is not None:
            self.inputs = check_phema_stds(self.inputs, "inputs")
        if isinstance(self.out, str) and not self.out.endswith(".pt"):
            raise ValueError(f"--out must end in .pt, got {self.out}")


@dataclass(kw_only=True)
class SweepConfig(SamplingOptions):
    """Rebuild each profile of --sigma-rels (as `dico ema reconstruct`), sample it and evaluate the samples (as `dico
    sample` and `dico evaluate`), then print one table row per profile. Digits runs default to Digits-FID against the
    bundled digits; other runs need --ref. The sampling options are `dico sample`'s."""

    run_dir: RunDir  # a run folder trained with --phema-stds (or its phema/ folder)
    sigma_rels: SigmaRels  # the profiles to rebuild and evaluate, e.g. 0.01,0.05,0.1,0.2
    step: int | None = None  # rebuild the EMAs as of this step (None: the newest snapshot's)
    inputs: Annotated[tuple[float, ...] | None, comma_separated(float, "S1,S2,...")] = None
    """Use only the snapshots of these tracked profiles (None: all)."""
    ref: str | None = None  # the reference images of `dico evaluate` (None: digits runs, the bundled digits)
    features: Literal["inception", "digits"] | None = None  # None: digits for digits runs, else inception
    num_samples: int = 1000  # images per profile
    classes: Annotated[tuple[int, ...] | None, comma_separated(int, "C1,C2,...")] = None
    """Class ids, cycled (None: every class in turn)."""
    json: str | None = None  # also write the table to this JSON file
    overwrite: bool = False  # replace an existing --json file
    device: str | None = None  # cpu, cuda, cuda:1 ... (None: the local GPU if any)
    threads: Threads = "auto"  # CPU threads: N, or auto (the cores other processes leave free; torch's default on GPU)

    def __post_init__(self):
        super().__post_init__()
        check_threads(self.threads)
        if self.sigma_rels is not MISSING:  # (not while the flag parser builds its defaults)
            self.sigma_rels = check_phema_stds(self.sigma_rels, "sigma-rels")
            if not self.sigma_rels:
                raise ValueError("--sigma-rels: name at least one profile, e.g. 0.05,0.1")
        check_int("step", self.step, 1, none_ok=True)
        check_int("num_samples", self.num_samples, 1)
        if self.inputs is not None:
            self.inputs = check_phema_stds(self.inputs, "inputs")
