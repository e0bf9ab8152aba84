"""Prompts for text-conditioned models: where they come from (typed, a file, the captions of an evaluation set),
which image gets which, and their conditioning.

Image i is conditioned on prompts[i % len(prompts)] (typed prompts cycle in order; the evaluation protocol's list has
one caption per image), embedded by the checkpoint's text encoder, with the empty caption's embedding the checkpoint
recorded as the null that guidance contrasts with. A prompt's image is keyed by (seed, i) like every other sample, so
it does not depend on the batch it was drawn in.
"""

import hashlib
import json
from pathlib import Path

import torch

from ..conditioning import TextTokens, is_text_model


def read_prompts_file(path) -> list:
    """The prompts of a text file, one per line (surrounding spaces dropped, blank lines skipped); an empty file is an
    error, as is one that cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--prompts-file {path}: cannot be read ({err})") from err
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts-file {path} holds no prompts (one per line)")
    return prompts


def prompts_digest(prompts) -> str:
    """SHA-256 of a prompt list (what a resumed .npz run must share; 30K captions are not written out twice)."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode()).hexdigest()


class PromptConditions:
    """The conditioning of each image index: prompts[i % len(prompts)] embedded by `encoder` (a dico.text.TextEncoder),
    with `null_context` (L, D) as the null (None: the encoder's empty caption). Checked against `model` when given:
    the embeddings must be the (context_length, context_dim) it was built for."""

    def __init__(self, encoder, prompts, null_context: torch.Tensor | None = None, model=None):
        prompts = [str(p) for p in prompts]
        if not prompts:
            raise ValueError("no prompts to sample")
        self.encoder, self.prompts = encoder, prompts
        self.null_context = (encoder.null() if null_context is None else null_context).float().cpu()
        if model is not None:
            wanted = (model.config["context_length"], model.config["context_dim"])
            if tuple(self.null_context.shape) != wanted:
                raise ValueError(f"text encoder {encoder.name!r} gives {tuple(self.null_context.shape)} tokens x "
                                 f"width; the model was trained on {wanted}: use the text encoder it was trained with")

    def __len__(self) -> int:
        return len(self.prompts)

    def prompts_of(self, indices) -> list:
        return [self.prompts[i % len(self.prompts)] for i in indices]

    def __call__(self, indices) -> TextTokens:
        """TextTokens for these image indices: each distinct prompt embedded once."""
        prompts = self.prompts_of(indices)
        distinct = list(dict.fromkeys(prompts))
        embedded = self.encoder.encode(distinct).cpu()
        rows = torch.tensor([distinct.index(p) for p in prompts], dtype=torch.long)
        return TextTokens(embedded[rows], self.null_context)

    def record(self, count: int) -> dict:
        """What an .npz of `count` images records of its conditioning (resuming must share it)."""
        return {"text_encoder": self.encoder.to_dict(), "prompts": prompts_digest(self.prompts_of(range(count)))}


def text_encoder_for(record: dict | None, override=None, device=None):
    """The text encoder a checkpoint's `record` names (dico.text.TextEncoder.to_dict), or `override` (a name or
    folder, `--text-encoder`)."""
    from ..text import TextEncoder, load_text_encoder

    if override is not None:
        return load_text_encoder(override, device=device)
    if not record:
        raise ValueError("the checkpoint records no text encoder; name the one it was trained with (--text-encoder)")
    return TextEncoder.from_dict(record, device=device)


def check_prompt_sources(model, classes=None, prompts=(), prompts_file=None, captions=None) -> None:
    """A text model takes exactly one source of prompts and no classes; a class model takes no prompts."""
    sources = [name for name, given in (("--prompt", bool(prompts)), ("--prompts-file", prompts_file is not None),
                                        ("--captions", captions is not None)) if given]
    if not is_text_model(model):
        if sources:
            raise ValueError(f"{sources[0]} needs a text-conditioned model; this checkpoint holds a class-conditional "
                             "one (choose its classes with --classes)")
        return
    if classes is not None:
        raise ValueError("--classes needs a class-conditional model; this checkpoint holds a text-conditioned one "
                         "(give --prompt, --prompts-file or --captions)")
    if not sources:
        raise ValueError("a text-conditioned model needs prompts: --prompt TEXT (repeatable), --prompts-file FILE or "
                         "--captions DIR")
    if len(sources) > 1:
        raise ValueError(f"give one source of prompts, not {' and '.join(sources)}")


def gather_prompts(prompts=(), prompts_file=None, captions=None, count: int | None = None, seed: int = 0) -> list:
    """The prompt list: typed prompts, a file's lines, or one caption per image of `captions` (a captioned image
    folder, COCO's val split or an extracted latents folder; `count` of them, cycling the images, keyed by `seed`:
    dico.data.evaluation_captions)."""
    if prompts:
        return [str(p) for p in prompts]
    if prompts_file is not None:
        return read_prompts_file(prompts_file)
    if captions is not None:
        from ..data import evaluation_captions

        if not Path(captions).is_dir():
            raise FileNotFoundError(f"--captions {captions}: no such directory")
        found = evaluation_captions(captions, seed=seed, count=count)
        if not found:
            raise ValueError(f"--captions {captions}: no captioned images")
        return found
    raise ValueError("no prompts given")


def grid_prompts(data, count: int, seed: int = 0) -> list:
    """The prompts of a text run's final grid, at most `count`: for the digits, one per digit in a seen phrasing
    (a different one per digit: "0", "one", "a handwritten 2", ...); for other captioned data, the evaluation
    captions of its first images."""
    from ..data.datasets import DIGITS_TEXT

    if data == DIGITS_TEXT:
        from ..data.digits_text import SEEN_PHRASINGS, caption

        return [caption(SEEN_PHRASINGS[d % len(SEEN_PHRASINGS)], d) for d in range(min(10, count))]
    return gather_prompts(captions=data, count=count, seed=seed)


def write_prompt_grid(model, facts, path, prompts, per_prompt: int = 8, steps: int = 50, cfg_scale: float = 1.0,
                      seed: int = 0, device=None, method: str | None = None, objective=None, encoder=None) -> Path:
    """A PNG grid with one row per prompt, `per_prompt` samples each, each row labelled with its prompt; `facts`:
    the data's (its text encoder record and null context), `encoder` overrides the encoder."""
    from ..config import SamplingOptions
    from ..images import save_grid
    from .generate import generate, load_vae_for

    space = facts.space
    encoder = encoder or text_encoder_for(facts.text_encoder)
    conditions = PromptConditions(encoder, prompts, facts.null_context, model)
    indices = list(range(len(prompts) * per_prompt))
    row_prompts = [i // per_prompt for i in indices]  # image i is a sample of prompt i // per_prompt
    options = SamplingOptions(method=method, steps=steps, cfg_scale=cfg_scale, seed=seed)
    was_training = model.training
    model.eval()
    images = generate(model, space, indices, conditions(row_prompts), options, device,
                      vae=load_vae_for(space, device), objective=objective)
    model.train(was_training)
    return save_grid(images, path, nrow=per_prompt, scale=max(1, 32 // space.resolution),
                     labels=conditions.prompts_of(row_prompts))
