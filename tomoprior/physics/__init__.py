"""Physics (planned, issue "Physics, bead-phantom calibration ..."): X-ray spectra, anode heel
effect, polychromatic Beer-Lambert, noise, focal-spot blur and flat-field. Sits above
``projectors`` and below ``data``; nothing here yet, so nothing is exported."""

__all__: list[str] = []
