"""``tomoprior info``: what is installed and what can run here."""

from __future__ import annotations

import json
import os
import platform

import click

OPTIONAL = ["astra-toolbox", "odl", "diffdrr", "mambapy", "mamba-ssm", "spekpy", "nibabel", "pydicom", "scikit-image",
            "tomosipo"]
CORE = ["numpy", "scipy", "torch", "h5py", "pyyaml", "matplotlib", "click", "tqdm"]


def _version(dist: str) -> str | None:
    import importlib.metadata  # here, not at the top: it takes a good part of `tomoprior --help`

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect_info() -> dict:
    """Versions, devices, backends and phantoms, as a plain dict."""
    import torch

    from .. import __version__, projectors
    from .. import phantoms as ph

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    return {
        "tomoprior": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "huge_pages": _huge_pages(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpu_projector_kernels": _cpu_kernels(),
        "devices": devices,
        "backends": {
            name: {"description": desc, "available": name in projectors.available_backends()}
            for name, desc in projectors.registered().items()
        },
        "phantoms": ph.available_phantoms(),
        "packages": {name: _version(name) for name in CORE},
        "optional_packages": {name: _version(name) for name in OPTIONAL},
    }


def _cpu_kernels() -> dict:
    """Whether the "numba" backend runs the optional compiled (C, SIMD) forward kernels."""
    from ..projectors.numba_backend import compiled_kernels

    lib, how = compiled_kernels()
    back, why = compiled_kernels("adjoint")
    return {"compiled": lib is not None, "detail": how, "back_projection_compiled": back is not None,
            "back_projection": how if back is not None else why}


def _huge_pages() -> dict:
    """Whether torch backs large CPU tensors with transparent huge pages: the environment
    switch (set by the console script unless the user set it) and the kernel's mode."""
    from .main import HUGE_PAGES_ENV

    mode = None
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii").read()
        mode = text[text.index("[") + 1:text.index("]")]
    except (OSError, ValueError):
        pass
    return {HUGE_PAGES_ENV: os.environ.get(HUGE_PAGES_ENV), "kernel": mode}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info(as_json: bool) -> None:
    """Show installed backends, devices, phantoms and package versions."""
    data = collect_info()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"tomoprior {data['tomoprior']}  (python {data['python']}, {data['platform']})")
    click.echo(f"CPU cores: {data['cpu_count']}, torch threads: {data['torch_threads']}")
    click.echo(f"OpenMP wait policy: OMP_WAIT_POLICY={data['omp_wait_policy'] or 'unset (idle threads spin)'}")
    hp = data["huge_pages"]
    click.echo(f"huge pages for large tensors: THP_MEM_ALLOC_ENABLE={hp['THP_MEM_ALLOC_ENABLE'] or 'unset'}, "
               f"kernel mode {hp['kernel'] or 'n/a (not Linux or no THP)'}")
    k = data["cpu_projector_kernels"]
    click.echo(f"CPU projector kernels: {'compiled' if k['compiled'] else 'numba only'} ({k['detail']})")
    if k["compiled"]:
        back = "compiled (TOMOPRIOR_COMPILED_KERNELS=all)" if k["back_projection_compiled"] else \
            f"numba ({k['back_projection']})"
        click.echo(f"  back-projection: {back}")
    click.echo(f"devices: {', '.join(data['devices'])}")
    click.echo("projector backends:")
    for name, b in data["backends"].items():
        mark = "yes" if b["available"] else "no "
        click.echo(f"  [{mark}] {name:<10} {b['description']}")
    click.echo(f"phantoms: {', '.join(data['phantoms'])}")
    click.echo("packages: " + ", ".join(f"{k} {v}" for k, v in data["packages"].items() if v))
    opt = data["optional_packages"]
    click.echo("optional: " + ", ".join(f"{k} {v or '-'}" for k, v in opt.items()))
