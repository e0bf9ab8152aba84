"""What a model is conditioned on, with its null: one object that training, sampling, the pipeline and the demo pass
along without looking inside.

A conditioning holds one condition per image of a batch. It gives the model's keyword arguments, its null (the
unconditional input that label dropout trains and classifier-free guidance contrasts with), the batch of two
conditionings laid end to end ([cond; null] for guidance). Two kinds: class labels (`ClassLabels`: the null is the
extra label `num_classes`, passed as `y`) and text tokens (`TextTokens`: the token embeddings of each prompt, passed
as `context`; the null is the embedding of the empty caption).
"""

from dataclasses import dataclass

import torch

from .options import check_class_ids


class Conditioning:
    """The interface; see ClassLabels."""

    def model_kwargs(self) -> dict:
        raise NotImplementedError

    def null(self) -> "Conditioning":
        """The unconditional input for every image of this batch."""
        raise NotImplementedError

    def dropped(self, drop: torch.Tensor) -> "Conditioning":
        """This batch with the null where `drop` (a bool per image) is true: training's condition dropout."""
        raise NotImplementedError

    def cat(self, other: "Conditioning") -> "Conditioning":
        raise NotImplementedError

    def to(self, device) -> "Conditioning":
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    @staticmethod
    def check_guidable(model) -> None:
        """Refuse a model that has no null input to guide with."""
        raise NotImplementedError


@dataclass
class ClassLabels(Conditioning):
    """Class ids, one per image; the null is the label `num_classes` (the extra row label dropout trains)."""

    labels: torch.Tensor
    num_classes: int

    def model_kwargs(self) -> dict:
        return {"y": self.labels}

    def null(self) -> "ClassLabels":
        return ClassLabels(torch.full_like(self.labels, self.num_classes), self.num_classes)

    def dropped(self, drop: torch.Tensor) -> "ClassLabels":
        return ClassLabels(torch.where(drop, self.num_classes, self.labels), self.num_classes)

    def cat(self, other: "ClassLabels") -> "ClassLabels":
        return ClassLabels(torch.cat([self.labels, other.labels]), self.num_classes)

    def to(self, device) -> "ClassLabels":
        return ClassLabels(self.labels.to(device), self.num_classes)

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def check_guidable(model) -> None:
        """A class-conditional model can be guided when its label table has the null row (it was trained with label
        dropout); an unconditional one (num_classes 0) has only that row, and guidance leaves it unchanged."""
        if model.y_embedder.tables[0].num_embeddings <= model.num_classes:
            raise ValueError("classifier-free guidance needs a model trained with label dropout (a null class); "
                             "sample it with guidance scale 1")


@dataclass
class TextTokens(Conditioning):
    """The text encoder's token embeddings of one prompt per image, (N, L, D); the null is the empty caption's
    embedding (L, D), the condition caption dropout trains and guidance contrasts with."""

    context: torch.Tensor
    null_context: torch.Tensor

    def __post_init__(self):
        if self.context.ndim != 3:
            raise ValueError(f"text context must be (N, tokens, width), got shape {tuple(self.context.shape)}")
        if tuple(self.null_context.shape) != tuple(self.context.shape[1:]):
            raise ValueError(f"the null (empty caption) context has shape {tuple(self.null_context.shape)}, the "
                             f"prompts' {tuple(self.context.shape[1:])}: embedded by different text encoders?")

    def model_kwargs(self) -> dict:
        return {"context": self.context}

    def null(self) -> "TextTokens":
        null = self.null_context.to(self.context).expand_as(self.context)
        return TextTokens(null.contiguous(), self.null_context)

    def dropped(self, drop: torch.Tensor) -> "TextTokens":
        null = self.null_context.to(self.context)
        return TextTokens(torch.where(drop[:, None, None], null, self.context), self.null_context)

    def cat(self, other: "TextTokens") -> "TextTokens":
        return TextTokens(torch.cat([self.context, other.context]), self.null_context)

    def to(self, device) -> "TextTokens":
        return TextTokens(self.context.to(device), self.null_context.to(device))

    def __len__(self) -> int:
        return len(self.context)

    @staticmethod
    def check_guidable(model) -> None:
        """Every text model can be guided: its null is an input (the empty caption), not a trained table row."""
        if not is_text_model(model):
            raise ValueError("text conditioning needs a text-conditioned model (one that takes `context`)")


def is_text_model(model) -> bool:
    """Whether `model` is conditioned on text tokens (its config names their width, `context_dim`) rather than on
    class labels."""
    config = getattr(model, "config", None)
    return bool(config is not None and config.get("context_dim"))


def class_labels(labels, model) -> ClassLabels:
    """Class ids (a tensor or a list of integers in [0, num_classes)) as the conditioning of `model`, whose null
    label is its `num_classes`. Float ids (1.5, or a float tensor) are refused, never rounded."""
    ids = check_class_ids(labels.cpu() if torch.is_tensor(labels) else labels, model.num_classes)
    device = labels.device if torch.is_tensor(labels) else None
    return ClassLabels(torch.tensor(ids, dtype=torch.long, device=device), model.num_classes)
