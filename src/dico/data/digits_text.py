"""The bundled digits with captions, for the text-to-image demo: each image's captions name its digit as a numeral or
an English word, alone or in a short phrase ("3", "three", "a handwritten three", "the digit 3", ...).

Phrasings are templates over the two forms of a digit ({n} the numeral, {w} the word). The SEEN ones are the
captions training draws from; the UNSEEN ones never reach training and measure generalisation:
  - the other form of a seen template ("the number 3": training saw only "the number three"),
  - wordings never seen at all ("a picture of the digit three").
The issue's own example prompts ("3", "three", "a handwritten three", "the digit 3", "a handwritten 7") are all
seen, so the demo's promise does not rest on generalisation.

Captions are embedded once by the digits text tower (dico.text, "dico:digits-clip") and held in memory: 10 digits x
(len(SEEN) + len(UNSEEN)) captions of 77 x 64 floats, about 4 MB. Images stay pixels (8x8 grey, as DigitsDataset).
"""

import hashlib

from .captions import draw_caption
from .digits import DigitsDataset, digits_fingerprint

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SEEN_PHRASINGS = ("{n}", "{w}", "a handwritten {n}", "a handwritten {w}", "the digit {n}", "the digit {w}",
                  "the number {w}", "a {w}", "digit {n}", "handwritten {n}", "a picture of a {w}", "a drawing of {n}")
UNSEEN_PHRASINGS = ("the number {n}", "a {n}", "digit {w}", "handwritten {w}", "a picture of a {n}",
                    "a drawing of {w}", "a picture of the digit {w}", "the handwritten digit {n}",
                    "an image of the number {w}")


def caption(phrasing: str, digit: int) -> str:
    return phrasing.format(n=str(digit), w=DIGIT_WORDS[digit])


def digits_prompts(split: str = "seen") -> list:
    """[(caption, digit)] of every phrasing in `split` ("seen": what training draws from; "unseen": held out), digit
    by digit: the prompts the demo's evaluation samples and classifies."""
    phrasings = {"seen": SEEN_PHRASINGS, "unseen": UNSEEN_PHRASINGS}.get(split)
    if phrasings is None:
        raise ValueError(f"split must be 'seen' or 'unseen', got {split!r}")
    return [(caption(p, d), d) for d in range(10) for p in phrasings]


class DigitsTextDataset(DigitsDataset):
    """(x float32 (1, 8, 8) in [-1, 1], context float32 (77, D)): each visit one of the image's seen captions,
    drawn by a generator keyed by (seed, epoch, index) (call `set_epoch` first; the trainer does), as the token
    embeddings of `encoder` (a dico.text.TextEncoder; default the digits tower). `null_context`: the empty
    caption's embedding. `captions[i]`: the caption behind `embeddings[i]`. A DigitsDataset (images, labels), so
    what works on the digits' pixels (REPA's encoder tokens) works here too."""

    def __init__(self, encoder=None, seed: int = 0):
        if encoder is None:
            from ..text import DIGITS_TEXT_ENCODER, load_text_encoder

            encoder = load_text_encoder(DIGITS_TEXT_ENCODER)
        super().__init__()
        self.encoder_record = encoder.to_dict()
        self.seed, self.epoch = int(seed), 0
        self.captions = [caption(p, d) for d in range(10) for p in SEEN_PHRASINGS]
        self.embeddings = encoder.encode(self.captions).cpu()  # (10 * len(SEEN), L, D), row d * len(SEEN) + p
        self.null_context = encoder.null().cpu()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def caption_index(self, index: int) -> int:
        """Which caption (row of `captions`) item `index` carries in this epoch."""
        digit = int(self.labels[index])
        return digit * len(SEEN_PHRASINGS) + draw_caption(self.seed, self.epoch, index, len(SEEN_PHRASINGS))

    def __getitem__(self, index):
        return self.images[index], self.embeddings[self.caption_index(index)]


def digits_text_fingerprint(encoder_record: dict) -> str:
    """The digits, the seen phrasings and the text encoder: what a resumed run checks it still trains on."""
    text = repr((digits_fingerprint(), SEEN_PHRASINGS, sorted(encoder_record.items())))
    return hashlib.sha256(text.encode()).hexdigest()
