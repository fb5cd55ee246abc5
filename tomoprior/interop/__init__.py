"""Interoperability with other tomography libraries (ODL operators). Imports of the
foreign package happen inside the submodules, so ``import tomoprior`` never needs them."""
