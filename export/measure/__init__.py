"""Measuring artifacts: latency with the rows taking turns (``benchmark``), the machine it ran
on (``environment``), ORT's profiler (``profile``), the speed guardrail with its profiled cause
(``guardrail``) and ORT Mobile's ``.ort`` conversion (``edge``); for decoders, the generation
benchmark (``generation``, each row in a fresh ``generation_worker`` process: time to first token,
decode tokens/s, peak memory) and the decode guardrail (``decoder_guardrail``).

Imports ``export.onnx``, ``export.decoder`` and the ``compress`` rooms below it.
"""
