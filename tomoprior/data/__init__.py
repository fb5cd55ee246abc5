"""Data (planned, issue "Data: procedural pediatric skull phantoms ..."): HDF5 datasets,
DRR synthesis from CT volumes, torch Datasets. Sits above ``physics``; nothing exported yet."""

__all__: list[str] = []
