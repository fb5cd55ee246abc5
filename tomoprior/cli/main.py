"""``tomoprior`` console script.

The sub-commands live in their own modules, imported only when click needs them: running a
command imports that command's module alone, and ``tomoprior --help`` imports the command
modules (for their one-line help) but none of the library's layers. The command modules keep
numpy, torch and the layers out of their module level for the same reason;
``tests/test_lazy_imports.py`` checks that ``--help`` loads none of them.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from .._version import __version__

#: Sub-command name -> ``"module:attribute"`` of its click command inside ``tomoprior.cli``.
COMMANDS = {
    "calibrate": "calibrate:calibrate",
    "check-geometry": "check_geometry:check_geometry",
    "dataset": "dataset:dataset",
    "evaluate": "evaluate:evaluate",
    "info": "info:info",
    "reconstruct": "reconstruct:reconstruct",
    "simulate": "simulate:simulate",
    "study": "study:study",
    "train": "train:train",
    "trend": "trend:trend",
    "validate": "validate:validate",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use.

    Parameters
    ----------
    lazy_commands : dict of str to str
        Command name -> ``"module:attribute"``, the module relative to this package.
        Commands added with :meth:`add_command` work as in a plain group and take precedence.
    """

    def __init__(self, *args, lazy_commands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            module_name, attribute = self.lazy_commands[cmd_name].split(":")
            command = getattr(importlib.import_module(f"{__package__}.{module_name}"), attribute)
            if not isinstance(command, click.Command):  # a wrong table entry is a bug here, not a user error
                raise TypeError(f"{__package__}.{module_name}.{attribute} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="tomoprior")
def cli() -> None:
    """tomoprior: calibrated cone-beam geometry, differentiable projectors and phantoms.

    Lengths in mm, angles in degrees on the command line. Run `tomoprior COMMAND --help`.
    """


#: torch's switch for backing large CPU tensors (2 MiB and more) with transparent huge pages.
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def use_huge_pages(environ=None) -> bool:
    """Ask torch to back large CPU tensors with transparent huge pages (Linux), unless the user
    chose otherwise: sets ``THP_MEM_ALLOC_ENABLE=1`` in ``environ`` (default ``os.environ``) if it
    is not set. Returns whether it is now on.

    torch reads the variable at its first large allocation, so this must run before any (the
    console script calls it first). It changes only how memory is mapped, never a result:
    every fresh large tensor (activations, gradients, projections) is otherwise faulted in
    4 KiB page by page, which costs more than filling it (measured: a fresh 64 MiB tensor 36 ms
    to fill, 12-18 ms with huge pages; a 128^3 PSCT-Net training step 17.9 -> 14.8 s at the
    same peak memory). ``THP_MEM_ALLOC_ENABLE=0`` in the environment turns it off.
    """
    env = os.environ if environ is None else environ
    env.setdefault(HUGE_PAGES_ENV, "1")
    return env[HUGE_PAGES_ENV].strip() not in ("", "0")


#: OpenMP's switch for what idle worker threads do: spin (the default, "ACTIVE"-ish) or sleep.
OMP_WAIT_ENV = "OMP_WAIT_POLICY"


def use_passive_omp_wait(environ=None) -> str:
    """Let torch's idle OpenMP threads sleep instead of spinning, unless the user chose:
    sets ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` (default ``os.environ``) if it is not set.
    Returns the policy now in the environment.

    OpenMP reads the variable when torch's runtime loads, so this must run before ``import
    torch`` (the console script calls it first). After every parallel torch operation, torch's
    worker threads otherwise spin for a while waiting for the next one, and the numba kernels of
    the projectors and the feature lifting, which run on threads of their own, then share the
    cores with spinning threads. Measured (2 cores, AMD Zen 5, medians): the 32-channel 64^3
    prior forward + backward 45-55 ms -> 30-37 ms, a 128^3 -> 2 x 256^2 projection forward +
    backward through autograd 34-43 ms -> 27-34 ms; a 128^3 PSCT-Net training step unchanged
    (13.0 vs 12.5 s). It changes no result. ``OMP_WAIT_POLICY=ACTIVE`` in the environment keeps
    spinning. Programs that use the library directly can do the same with
    ``os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")`` before importing torch.
    """
    env = os.environ if environ is None else environ
    env.setdefault(OMP_WAIT_ENV, "PASSIVE")
    return env[OMP_WAIT_ENV]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code. Turns on huge pages for large
    tensors and sleeping idle OpenMP threads first (:func:`use_huge_pages`,
    :func:`use_passive_omp_wait`)."""
    use_huge_pages()
    use_passive_omp_wait()
    try:
        cli.main(args=argv, prog_name="tomoprior", standalone_mode=True)
    except SystemExit as exc:  # click exits; turn that into a return code
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
