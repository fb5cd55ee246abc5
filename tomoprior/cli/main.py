"""``tomoprior`` console script."""

from __future__ import annotations

import sys

import click

from .._version import __version__
from .calibrate import calibrate
from .dataset import dataset
from .evaluate import evaluate
from .info import info
from .reconstruct import reconstruct
from .simulate import simulate
from .train import train
from .trend import trend
from .validate import validate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="tomoprior")
def cli() -> None:
    """tomoprior: calibrated cone-beam geometry, differentiable projectors and phantoms.

    Lengths in mm, angles in degrees on the command line. Run `tomoprior COMMAND --help`.
    """


cli.add_command(validate)
cli.add_command(calibrate)
cli.add_command(dataset)
cli.add_command(evaluate)
cli.add_command(info)
cli.add_command(simulate)
cli.add_command(train)
cli.add_command(reconstruct)
cli.add_command(trend)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    try:
        cli.main(args=argv, prog_name="tomoprior", standalone_mode=True)
    except SystemExit as exc:  # click exits; turn that into a return code
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
