"""`dico extract-latents` and `dico export-data`: thin shells over dico.data."""


def run_extract(args) -> int:
    from ..repa import load_encoder
    from .extract import extract_latents

    encoder = load_encoder(args.repa_encoder, image_size=args.image_size) if args.repa_encoder else None
    extract_latents(args.data, args.out, image_size=args.image_size, vae=args.vae, batch_size=args.batch_size,
                    num_workers=args.num_workers, dtype=args.dtype, device=args.device,
                    max_batches=args.max_batches, progress=not args.no_progress, repa_encoder=encoder)
    return 0


def run_export(args) -> int:
    from . import export_digits

    path = export_digits(args.out)
    print(f"wrote {path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract-latents", help="encode an image folder with the SD VAE once, for latent training",
        description="Store the VAE posterior (mean, std) of every image and of its mirror image under --out. "
                    "Split over GPUs with torchrun; rerun the same command to resume an interrupted run.")
    p.add_argument("--data", required=True, help="image folder: root/<class>/<image> or root/<image>")
    p.add_argument("--out", required=True, help="latents directory to write (pass it to `dico train --data`)")
    p.add_argument("--image-size", type=int, default=256, help="center-crop size in pixels (default 256)")
    p.add_argument("--vae", default="ema", help="ema | mse (stabilityai/sd-vae-ft-*), a Hub id or a local "
                                                "directory (default ema)")
    p.add_argument("--repa-encoder", default=None,
                   help="also store this encoder's patch tokens for REPA: dinov2-b (hub:facebookresearch/dinov2:"
                        "dinov2_vitb14), hub:OWNER/REPO:ENTRY, timm:MODEL or a local file (default: none)")
    p.add_argument("--batch-size", type=int, default=64, help="images per process per VAE forward (default 64)")
    p.add_argument("--num-workers", type=int, default=4, help="image decoding processes per process (default 4)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                   help="storage precision (default float16: 16 KiB per 256px image with its mirror)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the local GPU if any)")
    p.add_argument("--max-batches", type=int, help="stop each process after this many batches (resume later)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_extract)

    p = subparsers.add_parser("export-data", help="write a bundled data set as an ADM-format .npz (FID reference)")
    p.add_argument("name", choices=["digits"], help="the data set (digits: what the demo trains on)")
    p.add_argument("--out", required=True, help="the .npz file to write")
    p.set_defaults(func=run_export)
