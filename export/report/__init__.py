"""The report of a run: its data model and summary, renderings, plots, manifest and environment.

``build`` makes ``report.json`` (checked against ``report.schema.json``) and writes it with
``report.md``/``report.html`` (``render``) and the PNGs (``plots``); ``summary`` holds what those
three share (the Pareto front, the headline latency); ``manifest`` writes ``manifest.json``;
``environment`` describes the machine. Nothing is imported here, so ``export.measure.environment``
stays as light as its own imports.
"""
