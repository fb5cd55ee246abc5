"""PSCT-Net refiner plugin for tomoprior (pediatric skull CT from a frontal and a lateral
X-ray, arXiv 2606.19867), re-implemented from the paper's description.

Registered in the entry-point group ``tomoprior.refiners`` as ``psctnet``::

    import tomoprior as tp
    net = tp.refiners.load("psctnet", preset="tiny")   # or psctnet.PSCTNet(preset="tiny")
    volume = net(xrays, geometry, prior)                # (B, 1, nz, ny, nx)
"""

from .axes import ViewFrame, view_frame
from .config import PRESETS, PSCTNetConfig
from .losses import (
    PatchDiscriminator3D,
    generator_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    projection_loss,
)
from .model import PSCTNet

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "PSCTNet",
    "PSCTNetConfig",
    "PatchDiscriminator3D",
    "ViewFrame",
    "__version__",
    "generator_loss",
    "lsgan_discriminator_loss",
    "lsgan_generator_loss",
    "projection_loss",
    "view_frame",
]
