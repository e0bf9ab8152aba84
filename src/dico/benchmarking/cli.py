"""`dico info` (params and GMACs per model) and `dico bench` (throughput side by side)."""

import json
from dataclasses import asdict

from .counting import PAPER_COSTS, model_cost
from .throughput import CLOCKS, DTYPES, TASKS, BenchConfig, benchmark, format_table


def info(args) -> int:
    from ..models import list_models

    names = args.models or [n for n in list_models() if n.startswith("DiCo")] + ["DiT-XL/2"]
    print(f"| model | image | params (M) | GMACs | paper params (M) | paper GMACs |")
    print("|---|---|---|---|---|---|")
    for name in names:
        cost = model_cost(name, args.image_size)
        paper = PAPER_COSTS.get((name, args.image_size))
        p_params, p_macs = (f"{paper[0]:.1f}" if paper[0] else "", f"{paper[1]:.2f}") if paper else ("", "")
        print(f"| {name} | {args.image_size} | {cost.params / 1e6:.1f} | {cost.macs / 1e9:.2f} | {p_params} | {p_macs} |")
    return 0


def bench(args) -> int:
    import torch

    from ..cpu_allocator import malloc_tuned

    if args.threads:
        torch.set_num_threads(args.threads)
    config = BenchConfig(models=args.models, tasks=args.tasks, batch_sizes=args.batch_sizes, dtypes=args.dtypes,
                         image_size=args.image_size, device=args.device, repeats=args.repeats, warmup=args.warmup,
                         sample_steps=args.steps, cfg_scale=args.cfg_scale, official=args.official, clock=args.clock)
    results = benchmark(config, progress=None if args.quiet else lambda msg: print(msg, flush=True))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, clock {args.clock}, "
          f"glibc malloc tuning {'on' if malloc_tuned() else 'off'}")
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dict(asdict(r), images_per_second=r.images_per_second) for r in results], f, indent=1)
    return 0


def register(subparsers):
    p = subparsers.add_parser("info", help="parameters and GMACs (the paper's GFLOPs) per model")
    p.add_argument("models", nargs="*", help="registered model names (default: all DiCo sizes and DiT-XL/2)")
    p.add_argument("--image-size", type=int, default=256, help="image resolution in pixels (latent = image/8)")
    p.set_defaults(func=info)

    p = subparsers.add_parser("bench", help="throughput of forward / training step / sampling, side by side")
    p.add_argument("--models", nargs="+", default=["DiCo-S"], help="registered model names")
    p.add_argument("--tasks", nargs="+", default=["forward"], choices=TASKS)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[16])
    p.add_argument("--dtypes", nargs="+", default=["fp32"], choices=DTYPES,
                   help="fp32 (TF32 off), tf32 (CUDA only), bf16 (torch.autocast)")
    p.add_argument("--image-size", type=int, default=256, help="image resolution in pixels (latent = image/8)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per configuration")
    p.add_argument("--steps", type=int, default=10, help="sampling steps (each a CFG forward at 2x batch)")
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--official", default=None, help="checkout of shallowdream204/DiCo to compare against")
    p.add_argument("--clock", default="wall", choices=list(CLOCKS),
                   help="wall: elapsed time; cpu: process CPU time (robust on a shared machine, use with --threads 1)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--tune-malloc", action="store_true",
                   help="apply the glibc malloc settings of the other dico commands (for every model in the run); "
                        "default: measure as in a plain Python process")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=bench)
