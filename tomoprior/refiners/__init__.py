"""Refiners (planned, issue "Refiner plugins and PSCT-Net ..."): the Refiner protocol, the
registry over the ``tomoprior.refiners`` entry points and the geometry prior. Sits above
``data``; nothing exported yet."""

__all__: list[str] = []
