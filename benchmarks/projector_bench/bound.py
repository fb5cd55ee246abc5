"""The per-core instruction bound of a Joseph projector, measured in every benchmark run.

A Joseph sample reads a bilinear footprint: 4 element loads. A core issues at most
``loads_per_cycle`` loads per cycle (3 on AMD Zen 4 and Intel Golden Cove; 2 on older cores),
so no implementation, scalar or gather-vectorised, exceeds ``clock * loads_per_cycle / 4``
samples per core-second while the footprints hit L1. The clock is estimated from the rate of a
chain of dependent float64 additions (each waits ``fadd_latency`` cycles for the previous one),
timed in process CPU seconds, which a shared machine perturbs far less than wall time.
``benchmarks/hardware.py`` derives the same bound with its other resources (bandwidth, random
gathers); this module is the quick version the projector table uses for its "of bound" column.
"""

from __future__ import annotations

import statistics
import time

from numba import njit

#: Element loads per Joseph sample (bilinear footprint).
LOADS_PER_SAMPLE = 4.0


@njit(cache=False)
def _dependent_adds(n, y):
    x = 0.0
    for _ in range(n):
        x += y  # strict IEEE order (no fastmath): a chain of dependent additions
    return x


def dependent_add_rate(repeats: int = 5, n: int = 20_000_000) -> tuple[float, float]:
    """Dependent float64 additions per CPU second: ``(best, median)`` of ``repeats`` runs of a
    chain of ``n`` after a warm-up. Times the add latency, the core's clock."""
    _dependent_adds(1000, 1e-9)
    times = []
    for _ in range(repeats):
        c0 = time.process_time()
        _dependent_adds(n, 1e-9)
        times.append(time.process_time() - c0)
    return n / min(times), n / statistics.median(times)


def l1_bound(repeats: int = 5, *, fadd_latency: float = 3.0, loads_per_cycle: float = 3.0,
             n: int = 20_000_000) -> dict:
    """Measure the clock and return the L1 load-port bound in Joseph samples per core-second.

    Returns ``{"clock_ghz_estimate", "dependent_fadds_per_s", "fadd_latency_cycles",
    "loads_per_cycle", "samples_per_core_s"}``; the best of ``repeats`` runs after a warm-up.
    """
    rate, _ = dependent_add_rate(repeats, n)
    clock = rate * fadd_latency
    return {"clock_ghz_estimate": clock / 1e9, "dependent_fadds_per_s": rate, "fadd_latency_cycles": fadd_latency,
            "loads_per_cycle": loads_per_cycle, "samples_per_core_s": clock * loads_per_cycle / LOADS_PER_SAMPLE}
