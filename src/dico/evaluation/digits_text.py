"""The text-to-image digits demo's accuracy: does a prompt that names a digit give that digit?

Samples come as `dico sample` writes them for a text model: an .npz with `arr_0` images and a `prompts` array aligned
with them. Each prompt's digit is read from the demo's phrasings (dico.data.digits_text: seen and unseen); the
independent digits classifier (dico.evaluation.digits, never trained on samples, with a "not a digit" class that
counts as wrong) judges each image.
"""

from pathlib import Path

import numpy as np


def digits_named(prompts) -> np.ndarray:
    """The digit each prompt names, by the demo's phrasings (seen and unseen); a prompt that is none of them is a
    ValueError naming it."""
    from ..data.digits_text import digits_prompts

    known = dict(digits_prompts("seen") + digits_prompts("unseen"))
    unknown = [p for p in prompts if str(p) not in known]
    if unknown:
        raise ValueError(f"{len(unknown)} prompts are not phrasings of the digits demo (first: {unknown[0]!r})")
    return np.array([known[str(p)] for p in prompts], dtype=np.int64)


def digits_prompt_accuracy(samples, device="cpu") -> dict:
    """{"accuracy": share of images classified as the digit their prompt names, "count": images, "per_digit": the
    share for each digit 0..9} of `samples` (a path to an .npz with arr_0 and prompts)."""
    from .digits import NUM_DIGITS, DigitsFeatures

    with np.load(Path(samples)) as f:
        if "prompts" not in f.files:
            raise ValueError(f"{samples} holds no prompts array; sample a text model with `dico sample --prompt ...`")
        images, prompts = f["arr_0"], f["prompts"]
    wanted = digits_named(prompts)
    predicted = DigitsFeatures(device)(images)["logits"].argmax(1)
    right = predicted == wanted
    per_digit = [float(right[wanted == d].mean()) if (wanted == d).any() else None for d in range(NUM_DIGITS)]
    return {"accuracy": float(right.mean()), "count": int(len(right)), "per_digit": per_digit}
