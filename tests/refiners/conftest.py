"""Fixtures of the refiner tests. The dummy plugin distribution is data for the install test,
not test code: keep pytest (and its doctest collection) out of it."""

collect_ignore = ["dummy_plugin"]
