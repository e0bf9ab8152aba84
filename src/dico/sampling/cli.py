"""`dico sample`: images from our checkpoints, official ones (then --model is required) or the Hub."""

import math
from pathlib import Path

import torch

from ..checkpoints import load_pretrained
from ..distributed import barrier, setup, teardown
from ..images import save_grid
from .generate import SamplingOptions, generate, image_labels, load_vae_for, sample_to_npz


def run(args) -> int:
    env = setup(args.device)
    loaded = load_pretrained(args.ckpt, args.model, args.weights, args.image_size, args.vae, args.num_classes)
    model, space = loaded.model, loaded.output_space()
    model.to(env.device)
    classes = [int(c) for c in args.classes.split(",")] if args.classes else None
    if classes and any(not 0 <= c < model.num_classes for c in classes):
        raise ValueError(f"--classes must lie in [0, {model.num_classes}), got {classes}")
    options = SamplingOptions(method=args.method, steps=args.steps, cfg_scale=args.cfg_scale,
                              guidance_channels=args.guidance_channels, eta=args.eta, seed=args.seed,
                              batch_size=args.batch_size, cache_interval=args.cache_interval,
                              cache_depth=args.cache_depth, cache_guidance=not args.no_cache_guidance)
    out = Path(args.out)
    if out.suffix == ".npz":
        path = sample_to_npz(model, space, out, args.num_samples, options, classes, env.rank, env.world, env.device,
                             progress=env.main, barrier=barrier, run_info={"ckpt": str(args.ckpt)},
                             objective=loaded.objective)
    elif out.suffix == ".png":
        path = None
        if env.main:
            indices = list(range(args.num_samples))
            labels = image_labels(indices, model.num_classes, args.seed, classes)
            images = generate(model, space, indices, labels, options, env.device, vae=load_vae_for(space, env.device),
                              progress=True, objective=loaded.objective)
            path = save_grid(images, out, nrow=args.nrow or math.ceil(math.sqrt(len(images))))
    else:
        raise ValueError(f"--out must end in .png (a grid) or .npz (ADM format), got {out}")
    if env.main:
        print(f"wrote {args.num_samples} samples to {path}")
    teardown()
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="sample images from a checkpoint (PNG grid or ADM .npz)")
    p.add_argument("--ckpt", required=True, help="checkpoint: ours, official (needs --model) or owner/repo/file")
    p.add_argument("--model", default=None, help="model name; required for official checkpoints")
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.add_argument("--image-size", type=int, default=256, help="official latent models: 256 or 512 px")
    p.add_argument("--num-classes", type=int, default=None, help="official models: number of classes (1000)")
    p.add_argument("--vae", default=None, help="ema | mse | a local VAE directory (latent models)")
    p.add_argument("--method", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    p.add_argument("--cfg-scale", type=float, default=1.0)
    p.add_argument("--guidance-channels", default=3, type=lambda v: v if v == "all" else int(v),
                   help="guide the first N output channels (official: 3) or 'all'")
    p.add_argument("--classes", default=None, help="comma-separated class ids, cycled (default: random classes)")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--out", required=True, help="samples.png (grid) or samples.npz (ADM format)")
    p.add_argument("--nrow", type=int, default=None, help="images per grid row")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--cache-interval", type=int, default=1, help="DeepCache: full forward every N steps (1 = off)")
    p.add_argument("--cache-depth", type=int, default=1, choices=[1, 2], help="DeepCache: outer levels recomputed")
    p.add_argument("--no-cache-guidance", action="store_true",
                   help="DeepCache with guidance: cached steps run both halves instead of reusing cond - uncond")
    p.set_defaults(func=run)
