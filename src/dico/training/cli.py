"""`dico train`: with no --data, the laptop demo on the bundled digits; with --data, the official recipe."""

import json

from .config import preset
from .loop import config_from_checkpoint, resume_point, train

# CLI flag -> TrainConfig field. Flags default to None so that only what the user typed overrides the preset
# (or, on --resume, the configuration saved in the checkpoint).
FLAGS = {
    "model": str, "data": str, "image_size": int, "vae": str, "results_dir": str, "max_steps": int,
    "global_batch": int, "micro_batch": int, "lr": float, "weight_decay": float, "warmup_steps": int,
    "ema_decay": float, "seed": int, "precision": str, "log_every": int, "ckpt_every": int, "num_workers": int,
    "grid_steps": int, "grid_cfg_scale": float,
}


def run(args) -> int:
    overrides = {k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None}
    if args.betas:
        overrides["betas"] = tuple(float(b) for b in args.betas.split(","))
    if args.grad_checkpointing:
        overrides["grad_checkpointing"] = True
    if args.model_options:
        overrides["model_overrides"] = json.loads(args.model_options)
    name = args.preset or ("demo" if args.data is None else "official")
    results_dir = overrides.get("results_dir", preset(name).results_dir)
    point = resume_point(args.resume, results_dir)
    config = config_from_checkpoint(point, **overrides) if point else preset(name, **overrides)
    train(config, resume=point, device=args.device, progress=not args.no_progress)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (no --data: the digits demo on CPU)")
    p.add_argument("--preset", choices=["official", "dico-h", "demo"], default=None,
                   help="recipe (default: demo without --data, official with it)")
    p.add_argument("--model", help="model name, e.g. DiCo-XL (see dico info)")
    p.add_argument("--model-options", help='JSON of model overrides, e.g. \'{"channel_attention": "se"}\'')
    p.add_argument("--data", help="extracted latents dir or image folder (omit: bundled digits)")
    p.add_argument("--image-size", type=int, help="image folders: training resolution in pixels")
    p.add_argument("--vae", help="latents: the VAE that decodes samples (ema|mse|dir); image folders: refused, "
                   "run dico extract-latents first")
    p.add_argument("--results-dir", help="checkpoints, logs and samples go here")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--global-batch", type=int, help="images per optimizer step, over all processes")
    p.add_argument("--micro-batch", type=int, help="images per process per forward (gradient accumulation)")
    p.add_argument("--lr", type=float)
    p.add_argument("--betas", help="AdamW betas, e.g. 0.9,0.999")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--precision", choices=["fp32", "bf16"])
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--log-every", type=int)
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--grid-steps", type=int, help="sampling steps for the final sample grid")
    p.add_argument("--grid-cfg-scale", type=float, help="guidance scale for the final sample grid")
    p.add_argument("--resume", help="a checkpoint path, or 'auto' for the newest in --results-dir")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the local GPU if any)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
