"""`dico evaluate REF SAMPLES`: a thin shell over `dico.evaluation.evaluate`."""

import json
from pathlib import Path

from .evaluate import FEATURE_KINDS, evaluate
from .inception import INCEPTION_WEIGHTS_URL


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="FID, sFID, Inception Score, precision and recall of samples against a reference (ADM's evaluator)",
        description=(
            "Compare SAMPLES with REF, each an ADM-format .npz (arr_0: uint8 N x H x W x C) or a folder of png/jpg "
            "images. A REF .npz with precomputed mu/sigma/mu_s/sigma_s (ADM reference batches) uses them for "
            "FID/sFID. Features are cached next to each input."
        ),
    )
    p.add_argument("reference", help="reference batch, e.g. VIRTUAL_imagenet256_labeled.npz")
    p.add_argument("samples", help="samples .npz (e.g. from `dico sample`) or image folder")
    p.add_argument("--features", choices=FEATURE_KINDS, default="inception",
                   help="inception: ADM's metrics (default); digits: offline Digits-FID and class accuracy for the "
                        "digits demo (not comparable with ImageNet FID)")  # fmt: skip
    p.add_argument("--inception-weights", metavar="FILE",
                   help=f"local copy of {INCEPTION_WEIGHTS_URL} for offline machines (default: download once)")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default 200 on CUDA, 32 on CPU)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu, ... (default: cuda when available)")
    p.add_argument("--json", metavar="OUT", help="also write the metrics to this JSON file")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write feature caches")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args) -> int:
    result = evaluate(
        args.reference,
        args.samples,
        features=args.features,
        inception_weights=args.inception_weights,
        batch_size=args.batch_size,
        device=args.device,
        use_cache=not args.no_cache,
        progress=not args.quiet,
    )
    print(result.format())
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0
