"""Benchmarks on real models, side by side with the tools users would pick instead.

``python -m benchmarks SUITE`` (or ``modelpress bench SUITE``) runs a suite and writes
``reports/benchmarks/<suite>.md`` and ``.json``. ``--quick`` is the smoke mode CI runs.
"""
