"""dico's networks as diffusers model components (ModelMixin + ConfigMixin).

Each component IS the dico network (a subclass, same parameter names and forward), so official checkpoints load with
strict=True and outputs are bit for bit those of dico's model; diffusers only adds `save_pretrained` /
`from_pretrained` and a config whose keys are exactly the network's constructor keywords (read from its signature,
not written out a second time).
"""

import inspect
from dataclasses import asdict

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from ..models import DiCo, DiT, TextDiCo
from ..models.mmdit import MMDiT


def config_from_signature(network_init):
    """An `__init__` that forwards to `network_init` and that diffusers registers under `network_init`'s keywords."""

    def __init__(self, *args, **kwargs):
        network_init(self, *args, **kwargs)

    __init__.__signature__ = inspect.signature(network_init)
    return register_to_config(__init__)


class DicoComponent(ModelMixin, ConfigMixin):
    """What the diffusers form of every dico network shares."""

    config_name = "config.json"

    # diffusers keeps the registered constructor keywords in `config`; dico's networks also record their settings
    # under that name while they are built. The registered keywords are the same settings, so diffusers' copy wins.
    @property
    def config(self):
        return self._internal_dict

    @config.setter
    def config(self, value):
        pass

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """diffusers' loader, then the parameter layout dico's constructor gives (see `match_parameter_strides`)."""
        return match_parameter_strides(super().from_pretrained(*args, **kwargs))

    @classmethod
    def from_network(cls, network):
        """The component holding a copy of a dico network's weights (built by `dico.create_model` or loaded)."""
        component = cls(**network_settings(network))
        component.load_state_dict(network.state_dict(), strict=True)
        return component.to(next(network.parameters()).device).train(network.training)


class DiCo2DModel(DiCo, DicoComponent):
    """DiCo (the diffusion ConvNet) as a diffusers model: `model(x, t, y)` -> (N, out_channels, H, W)."""

    __init__ = config_from_signature(DiCo.__init__)
    from_config = vars(ConfigMixin)["from_config"]  # diffusers' (a config dict), not the network's (a dataclass)


class DiT2DModel(DiT, DicoComponent):
    """dico's DiT as a diffusers model (same parameter names as the official DiT release)."""

    __init__ = config_from_signature(DiT.__init__)
    from_config = vars(ConfigMixin)["from_config"]


class TextDiCo2DModel(TextDiCo, DicoComponent):
    """Text-conditioned DiCo as a diffusers model: `model(x, t, context)` with prompt token embeddings."""

    __init__ = config_from_signature(TextDiCo.__init__)
    from_config = vars(ConfigMixin)["from_config"]


class MMDiT2DModel(MMDiT, DicoComponent):
    """REPA's text-to-image baseline MMDiT as a diffusers model: `model(x, t, context)`."""

    __init__ = config_from_signature(MMDiT.__init__)
    from_config = vars(ConfigMixin)["from_config"]


COMPONENTS = {DiCo: DiCo2DModel, DiT: DiT2DModel, TextDiCo: TextDiCo2DModel, MMDiT: MMDiT2DModel}


def match_parameter_strides(component):
    """Give every parameter the strides dico's constructor gives it (DiCo keeps 1x1 and depthwise convolution weights
    in channels-last strides); diffusers' loader builds its own tensors with the default strides, which hold the
    same values and memory order but can send a CPU convolution down another kernel (other rounding). In place."""
    with torch.device("meta"):
        reference = dict(type(component)(**{k: v for k, v in network_settings(component).items()
                                            if not k.startswith("_")}).named_parameters())
    for name, p in component.named_parameters():
        ref = reference.get(name)
        if ref is not None and ref.shape == p.shape and p.stride() != ref.stride():
            p.data = torch.empty_strided(p.shape, ref.stride(), dtype=p.dtype, device=p.device).copy_(p.data)
    return component


def network_settings(network) -> dict:
    """The constructor keywords a dico network was built with."""
    spec = getattr(network, "spec", None)
    if isinstance(spec, dict) and isinstance(spec.get("config"), dict):
        return dict(spec["config"])
    if isinstance(network, DicoComponent):
        return dict(network.config)
    return asdict(network.config)


def as_component(network):
    """A dico network as its diffusers component (unchanged if it already is one)."""
    if isinstance(network, DicoComponent):
        return network
    for base in type(network).__mro__:  # the closest: a TextDiCo is a DiCo too, with other constructor keywords
        if base in COMPONENTS:
            return COMPONENTS[base].from_network(network)
    raise TypeError(f"expected a dico network ({', '.join(c.__name__ for c in COMPONENTS)}), got "
                    f"{type(network).__name__}")
