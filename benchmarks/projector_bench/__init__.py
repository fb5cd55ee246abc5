"""The parts of ``benchmarks/projectors.py``: the problem (:mod:`.problem`), the plain
``grid_sample`` peer (:mod:`.peer`), timing (:mod:`.timing`), fresh-process measurements
(:mod:`.children`), DiffDRR (:mod:`.diffdrr_peer`, run by :mod:`.diffdrr_worker`) and the
report (:mod:`.report`)."""
