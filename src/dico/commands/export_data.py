"""`dico export-data`: a thin shell over dico.data.export_digits."""

from ..config import ExportDataConfig
from ..data import export_digits


def run(config: ExportDataConfig) -> int:
    print(f"wrote {export_digits(config.out, overwrite=config.overwrite)}")
    return 0
