"""Build of the optional compiled projector kernels (everything else is in pyproject.toml).

``tomoprior/projectors/_joseph.c`` holds SIMD versions of the numba backend's Joseph kernels
(bitwise identical results, about twice as fast on a CPU with AVX2 or AVX-512). It is built
as an *optional* extension: without a C compiler, or if the build fails, the installation
goes on and the numba kernels run instead (``tomoprior info`` says which).
"""

import platform
import sys

from setuptools import Extension, setup


def _flags() -> list[str]:
    if sys.platform == "win32":
        return ["/O2", "/fp:precise"]
    flags = ["-O3", "-fno-fast-math", "-ffp-contract=off", "-fopenmp-simd", "-std=c11"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        # gathers (the bilinear taps of neighbouring rays) are off in GCC's generic tuning;
        # the hot loops are cloned for x86-64-v4 / v3 (target_clones) and use them there
        flags += ["-mtune=icelake-server", "-mprefer-vector-width=512"]
    return flags


setup(ext_modules=[Extension("tomoprior.projectors._joseph", ["tomoprior/projectors/_joseph.c"],
                             extra_compile_args=_flags(), optional=True)])
