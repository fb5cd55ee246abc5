"""Plans of `tomoprior study run` shipped with the package: ``smoke.yaml`` (a minute of CPU,
every arm kind) and ``referee.yaml`` (the real study). :func:`plan_path` gives their paths."""

from pathlib import Path


def plan_path(name: str) -> Path:
    """Path of a shipped plan (``"smoke"`` or ``"referee"``)."""
    p = Path(__file__).with_name(f"{name}.yaml")
    if not p.is_file():
        shipped = sorted(q.stem for q in Path(__file__).parent.glob("*.yaml"))
        raise ValueError(f"no shipped plan {name!r}; shipped plans: {shipped}")
    return p
