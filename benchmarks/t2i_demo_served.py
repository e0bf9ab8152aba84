"""The text-to-image digits model as users reach it through the web: a checkpoint converted to a pipeline folder,
served by `dico demo`, asked through its API (gradio_client) for every digit named as a numeral, a word and a phrase
("a handwritten seven"), `--per-prompt` images each; the independent digits classifier says whether each image shows
the digit its prompt names. Prints one line per kind of prompt.

    python benchmarks/t2i_demo_served.py RUN/checkpoints/0001500.pt [--per-prompt 4] [--steps 50] [--guidance 2]

Uses only dico's library (dico.pipelines.save_pipeline, dico.demo.launch, dico.evaluation.digits) and gradio_client.
"""

import argparse
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PROMPT_KINDS = {"numerals": [str(d) for d in range(10)], "words": WORDS,
                "phrases": [f"a handwritten {word}" for word in WORDS]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--per-prompt", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from gradio_client import Client
    from PIL import Image

    from dico.demo import launch
    from dico.evaluation.digits import DigitsFeatures
    from dico.pipelines import save_pipeline

    with tempfile.TemporaryDirectory() as work:
        folder = save_pipeline(args.checkpoint, Path(work) / "pipeline")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        demo = launch(str(folder), port=port, device="cpu", prevent_thread_lock=True)
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(Path(work) / "got"))
            sampler = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]
            sampler = sampler["parameters"][4]["parameter_default"]  # the page's default sampler
            classifier = DigitsFeatures()
            for kind, prompts in PROMPT_KINDS.items():
                start = time.perf_counter()
                gallery, status = client.predict("\n".join(prompts), args.per_prompt, args.guidance, args.steps,
                                                 sampler, args.seed, False, api_name="/generate")
                # The page shows small images enlarged by pixel repetition; the classifier reads them at any size.
                images = np.stack([np.asarray(Image.open(item["image"]).convert("RGB")) for item in gallery])
                wanted = np.repeat(np.arange(10), args.per_prompt)
                accuracy = (classifier(images)["logits"].argmax(1) == wanted).mean()
                print(f"{kind}: the classifier reads the named digit in {accuracy:.0%} of {len(images)} images "
                      f"({time.perf_counter() - start:.1f} s; {status})")
        finally:
            demo.close()


if __name__ == "__main__":
    main()
