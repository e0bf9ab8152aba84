"""Example inputs of a model: what counting, benchmarking and layer probes feed it, built from the model's config so
each caller works for class-conditional and text-conditioned models alike."""

import torch

from ..conditioning import ClassLabels, Conditioning, TextTokens, is_text_model


def example_condition(model, batch: int, generator: torch.Generator | None = None, device=None,
                      num_classes: int | None = None) -> Conditioning:
    """A batch of conditions for `model`: text token embeddings (batch, context_length, context_dim) with a zero null
    for a text model, else class labels below `num_classes` (default the model's). All zeros (label 0) without a
    generator; standard normal embeddings or uniform labels drawn from it with one."""
    if is_text_model(model):
        shape = (batch, model.config["context_length"], model.config["context_dim"])
        context = torch.zeros(shape) if generator is None else torch.randn(shape, generator=generator)
        return TextTokens(context.to(device), torch.zeros(shape[1:], device=device))
    classes = getattr(model, "num_classes", None) if num_classes is None else num_classes
    classes = 0 if classes is None else classes
    if generator is None:
        labels = torch.zeros(batch, dtype=torch.long)
    else:
        labels = torch.randint(0, max(classes, 1), (batch,), generator=generator)
    return ClassLabels(labels.to(device), classes)


def example_inputs(model, batch: int = 1, size: int | None = None, device=None, dtype=None) -> tuple:
    """Zero inputs for `model(x, t, **cond.model_kwargs())`: (x, t, cond) with x (batch, in_channels, size, size),
    size defaulting to the model's input_size (8 for a model that takes any size), and t = 0."""
    size = size or getattr(model, "input_size", 8)
    x = torch.zeros(batch, model.in_channels, size, size, device=device, dtype=dtype)
    t = torch.zeros(batch, device=device)
    cond = example_condition(model, batch, device=device)
    if dtype is not None and isinstance(cond, TextTokens):
        cond = TextTokens(cond.context.to(dtype), cond.null_context.to(dtype))
    return x, t, cond
