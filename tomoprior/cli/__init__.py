"""Command line: ``tomoprior <verb>``: validate, calibrate, simulate, dataset, train, evaluate,
reconstruct, info (also ``python -m tomoprior <verb>``)."""

from .main import cli, main

__all__ = ["cli", "main"]
