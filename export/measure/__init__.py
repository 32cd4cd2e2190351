"""Measuring artifacts: latency with the rows taking turns (``benchmark``), the machine it ran
on (``environment``), ORT's profiler (``profile``), the speed guardrail with its profiled cause
(``guardrail``) and ORT Mobile's ``.ort`` conversion (``edge``).

Imports ``export.onnx`` and the ``compress`` rooms below it. A generation benchmark (time to
first token, decode tokens/s) belongs here.
"""
