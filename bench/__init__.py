"""Benchmarks for cme-mailbot: `make bench` runs `python -m bench.run` (see its --help).

Measurements only: nothing here is a timed test in the pytest suite.
"""
