"""The text-to-image digits demo, measured: for each checkpoint, samples of every seen and every unseen phrasing
(`--per-prompt` each), the independent digits classifier's accuracy on each set (does the image show the digit the
prompt names?), Digits-FID of the seen-phrasing samples against the training digits, and the model's CPU forward
img/s (dico bench, batch 64, one thread, CPU clock). Prints one Markdown table row per checkpoint.

    python benchmarks/t2i_digits.py RUN/checkpoints/0001000.pt ... [--per-prompt 2] [--steps 11] [--cfg-scale 2]

Uses only dico's library: dico.sampling.sample, dico.evaluation.digits_text, dico.evaluation.evaluate,
dico.benchmarking.
"""

import argparse
import json
from pathlib import Path

import torch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--per-prompt", type=int, default=2)
    parser.add_argument("--steps", type=int, default=11)  # flow: time points (Euler: 10 steps)
    parser.add_argument("--method", default="euler")
    parser.add_argument("--cfg-scale", type=float, default=2.0)
    parser.add_argument("--work", default="t2i-eval")
    parser.add_argument("--no-bench", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from dico.config import SampleConfig
    from dico.data import digits_prompts, export_digits
    from dico.evaluation import evaluate
    from dico.evaluation.digits_text import digits_prompt_accuracy
    from dico.sampling import sample

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    reference = work / "digits.npz"
    if not reference.exists():
        export_digits(reference)  # the training digits, as `dico export-data digits`
    files = {}
    for split in ("seen", "unseen"):
        files[split] = work / f"{split}.txt"
        files[split].write_text("".join(p + "\n" for p, _ in digits_prompts(split)))
    print("| checkpoint | accuracy, seen phrasings | accuracy, unseen phrasings | Digits-FID (seen) | CPU img/s |")
    print("|---|---|---|---|---|")
    for ckpt in args.checkpoints:
        tag = Path(ckpt).parent.parent.name + "-" + Path(ckpt).stem
        row = {}
        for split in ("seen", "unseen"):
            count = args.per_prompt * len(digits_prompts(split))
            out = work / f"{tag}-{split}.npz"
            sample(SampleConfig(ckpt=ckpt, prompts_file=str(files[split]), num_samples=count, out=str(out),
                                method=args.method, steps=args.steps, cfg_scale=args.cfg_scale, batch_size=60,
                                threads=1))
            row[split] = digits_prompt_accuracy(out)
        fid = evaluate(str(reference), str(work / f"{tag}-seen.npz"), features="digits", progress=False)
        speed = None
        if not args.no_bench:
            from dico.benchmarking import benchmark
            from dico.config.benchmarking import BenchConfig

            results = benchmark(BenchConfig(models=[ckpt], tasks=["forward"], batch_sizes=[64], repeats=3,
                                            clock="cpu"))
            speed = results[0].images_per_second
        print(f"| {tag} | {row['seen']['accuracy']:.3f} ({row['seen']['count']}) | "
              f"{row['unseen']['accuracy']:.3f} ({row['unseen']['count']}) | {fid.fid:.1f} | "
              f"{'' if speed is None else f'{speed:.0f}'} |", flush=True)
        (work / f"{tag}.json").write_text(json.dumps({"seen": row["seen"], "unseen": row["unseen"],
                                                      "digits_fid": fid.fid, "img_per_s": speed}, indent=1))


if __name__ == "__main__":
    main()
