"""A plugin module that cannot be imported (a missing dependency)."""

import tomoprior_dependency_that_does_not_exist  # noqa: F401


class BrokenRefiner:
    pass
