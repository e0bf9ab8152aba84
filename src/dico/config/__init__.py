"""Every command's options as typed dataclasses (checked and read from YAML by dico.options).

Torch-free: it imports only dico.options and the objectives' settings (dico.objectives), so that `dico --help` and
`dico CMD --help` build their parsers from these classes in a fraction of a second. The library packages re-export
the classes they take (`dico.training.TrainConfig`, `dico.sampling.SampleConfig`, ...).
"""

from .benchmarking import BenchCommand, BenchConfig, InfoConfig
from .convert import ConvertConfig
from .data import ExportDataConfig, ExtractLatentsConfig
from .demo import DemoConfig
from .evaluation import EvaluateConfig
from .repa import RESIZE_MODES, RepaConfig, repa_weight_at
from .sampling import SampleConfig, SamplingOptions
from .training import PRESETS, TrainCommand, TrainConfig, preset, save_config

__all__ = ["BenchCommand", "BenchConfig", "ConvertConfig", "DemoConfig", "EvaluateConfig",
           "ExportDataConfig", "ExtractLatentsConfig", "InfoConfig", "PRESETS", "RESIZE_MODES",
           "RepaConfig", "SampleConfig", "SamplingOptions", "TrainCommand", "TrainConfig", "preset", "repa_weight_at",
           "save_config"]
