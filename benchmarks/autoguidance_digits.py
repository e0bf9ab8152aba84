"""Digits-FID and class accuracy against guidance scale: classifier-free guidance and autoguidance on the digits demo.

    python benchmarks/autoguidance_digits.py MAIN_CKPT OUT_DIR [--guide NAME=CKPT ...] [--scales 1.5,2,3]

Writes OUT_DIR/NAME-SCALE.npz (as `dico sample --labels balanced --steps 50 --num-samples N` would, and resumable
like it) and appends one JSON line per run to OUT_DIR/results.jsonl; the reference is the training digits
(`dico export-data digits`). The same numbers come from the commands: `dico sample --ckpt MAIN [--guide-ckpt CKPT]
--cfg-scale S --labels balanced --steps 50 --num-samples N --out s.npz; dico evaluate digits.npz s.npz
--features digits`.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from dico.checkpoints import load_pretrained
from dico.evaluation import evaluate
from dico.sampling import SamplingOptions, sample_to_npz
from dico.sampling.autoguidance import load_guide


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("main")
    parser.add_argument("out")
    parser.add_argument("--guide", action="append", default=[], help="NAME=CKPT")
    parser.add_argument("--scales", default="1.5,2,3")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--reference", default="digits.npz")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    main_model = load_pretrained(args.main)
    runs = [("unguided", None, 1.0)] + [("cfg", None, float(s)) for s in args.scales.split(",")]
    for spec in args.guide:
        name, path = spec.split("=", 1)
        guide = load_guide(path, main_model).model
        runs += [(name, guide, float(s)) for s in args.scales.split(",")]
    for name, guide, scale in runs:
        npz = out / f"{name}-{scale:g}.npz"
        options = SamplingOptions(method="ddpm", steps=args.steps, cfg_scale=scale, seed=0, batch_size=500)
        start = time.process_time()
        sample_to_npz(main_model.model, main_model.output_space(), npz, args.num_samples, options, progress=False,
                      objective=main_model.objective, guide=guide, labels="balanced", threads=1)
        seconds = time.process_time() - start
        result = evaluate(args.reference, npz, features="digits", progress=False, threads=1)
        line = {"guidance": name, "scale": scale, "fid": result.fid, "accuracy": result.class_accuracy,
                "precision": result.precision, "recall": result.recall, "cpu_s": round(seconds, 1)}
        print(json.dumps(line), flush=True)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
