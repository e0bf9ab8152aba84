"""What a run's data conditions its model on, decided once before the model is built: class labels or captions.

Class data builds a class model with the data's number of classes and drops labels with the model's
class_dropout_prob (the official recipe); text data builds a text model for the data's context shape (tokens x width
of its text encoder) and drops captions with the run's `caption_dropout` (the empty caption, REPA's --cfg-prob). A
model of the other kind is refused in one line before anything is written.
"""

from ..models import model_spec


def is_text_spec(spec: dict) -> bool:
    """Whether a model spec describes a text-conditioned model (it reads `context_dim`-wide prompt tokens)."""
    return bool(spec["config"].get("context_dim"))


def condition_overrides(model: str, facts) -> dict:
    """The model options the data fixes: {"num_classes": n} for class (or unconditional) data, {"context_length": L,
    "context_dim": D} for text data. A text model on class data, or a class model on text data, is a ValueError."""
    text_model = is_text_spec(model_spec(model))
    if facts.is_text:
        if not text_model:
            raise ValueError(f"{model} is a class-conditional model and the data is captioned; train a text model "
                             "on it, e.g. DiCo-S-DWC, DiCo-S-CrossAttn or MMDiT (see dico info)")
        length, dim = facts.context_shape
        return {"context_length": length, "context_dim": dim}
    if text_model:
        raise ValueError(f"{model} is a text-conditioned model and the data has no captions; train it on captioned "
                         "data (--data digits-text, or latents extracted with --text-encoder)")
    return {"num_classes": facts.num_classes}


def condition_dropout(spec: dict, facts, caption_dropout: float) -> float:
    """The probability that a training image gets the null condition: `caption_dropout` on text data, the model's
    class_dropout_prob on class data, none on unconditional data (its only label is the null already)."""
    if facts.is_text:
        return float(caption_dropout)
    return spec["config"].get("class_dropout_prob", 0.0) if facts.num_classes > 0 else 0.0
