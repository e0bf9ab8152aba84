"""`dico info`: parameters and GMACs per model (dico.benchmarking.model_cost), beside the paper's figures."""

from ..benchmarking import PAPER_COSTS, model_cost
from ..config import InfoConfig
from ..models import MODELS, list_models


def run(config: InfoConfig) -> int:
    # by default the paper's main table: the U-shaped DiCo sizes and DiT-XL/2 (name the others: DiCo-Iso-S/2 SiT-S/2)
    names = config.models or [n for n in list_models() if MODELS[n][0] == "dico"] + ["DiT-XL/2"]
    print("| model | image | params (M) | GMACs | paper params (M) | paper GMACs |")
    print("|---|---|---|---|---|---|")
    for name in names:
        cost = model_cost(name, config.image_size)
        paper = PAPER_COSTS.get((name, config.image_size))
        p_params, p_macs = (f"{paper[0]:.1f}" if paper[0] else "", f"{paper[1]:.2f}") if paper else ("", "")
        print(f"| {name} | {config.image_size} | {cost.params / 1e6:.1f} | {cost.macs / 1e9:.2f} | {p_params} | "
              f"{p_macs} |")
    return 0
