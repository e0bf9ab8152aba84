"""What a model is conditioned on, with its null: one object that training, sampling, the pipeline and the demo pass
along without looking inside.

A conditioning holds one condition per image of a batch. It gives the model's keyword arguments, its null (the
unconditional input that label dropout trains and classifier-free guidance contrasts with), the batch of two
conditionings laid end to end ([cond; null] for guidance). Class labels are one kind
(`ClassLabels`: the null is the extra label `num_classes`); a text embedding is the next.
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


def class_labels(labels, model) -> ClassLabels:
    """Class ids (a tensor or a list of integers in [0, num_classes)) as the conditioning of `model`, whose null
    label is its `num_classes`. Float ids (1.5, or a float tensor) are refused, never rounded."""
    ids = check_class_ids(labels.cpu() if torch.is_tensor(labels) else labels, model.num_classes)
    device = labels.device if torch.is_tensor(labels) else None
    return ClassLabels(torch.tensor(ids, dtype=torch.long, device=device), model.num_classes)
