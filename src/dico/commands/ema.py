"""`dico ema reconstruct` / `dico ema sweep`: thin shells over dico.training.phema.reconstruct and
dico.training.posthoc.sweep."""

import json

from ..cache import atomic_write
from ..config.ema import ReconstructConfig, SweepConfig
from ..options import check_new_output


def run(options: ReconstructConfig | SweepConfig) -> int:
    if isinstance(options, ReconstructConfig):
        from ..training.phema import reconstruct, save_reconstruction

        check_new_output(options.out, options.overwrite, "out")
        rec = reconstruct(options.run_dir, options.sigma_rel, options.step, options.inputs)
        used = ", ".join(f"{s}@{r:g}" for s, r, _ in rec.inputs)
        print(f"sigma_rel {rec.sigma_rel:g} at step {rec.step} from {len(rec.inputs)} snapshots (step@sigma_rel: "
              f"{used})")
        print(f"wrote {save_reconstruction(rec, options.out)}")
        return 0
    from ..training.posthoc import format_table, sweep

    if options.json:
        check_new_output(options.json, options.overwrite, "json")
    rows = sweep(options)
    print(format_table(rows))
    if options.json:
        text = json.dumps(rows, indent=2) + "\n"
        atomic_write(options.json, lambda partial: partial.write_text(text))
    return 0
