"""Calibration (planned, issue "Physics, bead-phantom calibration ..."): bead detection,
correspondence, least-squares geometry fit with uncertainty. Sits above ``refiners``;
nothing exported yet."""

__all__: list[str] = []
