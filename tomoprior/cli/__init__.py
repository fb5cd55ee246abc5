"""Command line: ``tomoprior <verb>`` (``info``, ``simulate``; more verbs arrive with their layers)."""

from .main import cli, main

__all__ = ["cli", "main"]
