"""Interoperability with other tomography tools: an ODL operator (``interop.odl``), DiffDRR
cameras (``interop.diffdrr``) and RTK circular geometries and their XML files
(``interop.rtk``). Imports of a foreign package happen inside the submodules (DiffDRR and RTK
are never imported at all), so ``import tomoprior`` never needs them."""
