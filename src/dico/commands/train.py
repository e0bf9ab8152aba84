"""`dico train`: with no --data, the laptop demo on the bundled digits; with --data, the official recipe.

The flags are TrainConfig's fields. Their defaults come from the preset (--preset, else demo without --data and
official with it), then a --config file, then the flags typed; with --resume, from the configuration saved in the
checkpoint instead of the preset, so that only what the user typed (or wrote in --config) changes the run.

`prepare` runs while the flags are read, `dico train --help` included, so this module imports the training loop (and
torch) only where a checkpoint is read or the run starts.
"""

import argparse

from ..config import PRESETS, TrainCommand, preset
from ..options import to_dict, with_values


def typed_choices(args: list) -> argparse.Namespace:
    """The flags that choose the base configuration, read before the full parse (which shows that base)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--preset", "--data", "--resume", "--results-dir"):
        parser.add_argument(flag)
    return parser.parse_known_args(args)[0]


def prepare(args: list, values: dict, source: str = "--config"):
    """(default TrainCommand for the flags in `args`, keyword arguments for `run`); `values`: those of the --config
    file named `source`."""
    typed = typed_choices(args)
    chosen = {k: v for k, v in vars(typed).items() if v is not None}
    settings = {**values, **chosen}  # flags typed win over the config file
    name = settings.get("preset") or ("demo" if settings.get("data") is None else "official")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    results_dir = settings.get("results_dir", preset(name).results_dir)
    point = None
    if settings.get("resume"):
        from ..training import config_from_checkpoint, resume_point  # only a resumed run reads a checkpoint

        point = resume_point(settings["resume"], results_dir)
    base = config_from_checkpoint(point) if point else preset(name)
    command = with_values(TrainCommand(**to_dict(base), preset=name), values, source)
    return command, {"resume": point}


def run(command: TrainCommand, resume=None) -> int:
    """Train as `command` says; `resume`: the ResumePoint `prepare` read (None: a fresh run)."""
    from ..training import train

    train(command.train_config(), resume=resume, device=command.device, progress=command.progress,
          threads=command.threads)
    return 0
