"""A tiny refiner plugin: ``scale * prior + bias`` with one learnable bias."""

from dataclasses import dataclass

import torch

from tomoprior.refiners import Refiner


@dataclass
class DummyConfig:
    scale: float = 2.0


class DummyRefiner(Refiner):
    name = "dummy"
    config_class = DummyConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, xrays, geometry, prior):
        self.check_inputs(xrays, geometry, prior)
        return self.config.scale * prior + self.bias


def not_a_refiner():
    """An entry point that is not a Refiner subclass (the registry must say so)."""
