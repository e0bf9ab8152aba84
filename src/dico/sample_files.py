"""The files `dico sample` writes, told apart by their suffix: a PNG grid or an ADM-format .npz.

Torch-free, so that the sampling options check `--out` before anything heavy is imported."""

from pathlib import Path

SAMPLE_FORMATS = {".png": ".png (a grid)", ".npz": ".npz (ADM format)"}


def check_out_suffix(out, suffixes=tuple(SAMPLE_FORMATS)) -> None:
    """Refuse an output path `out` whose suffix is not one of `suffixes`. The message names each choice with what
    it holds, or just the suffix when there is only one."""
    if Path(out).suffix not in suffixes:
        wanted = " or ".join(SAMPLE_FORMATS[s] for s in suffixes) if len(suffixes) > 1 else suffixes[0]
        raise ValueError(f"--out must end in {wanted}, got {out}")
