"""The run folder's evidence: the float artifacts and their records (``artifacts``), the stored
held-out sample and torch references that ``modelpress report`` re-measures from (``evidence``)
and the integrity check of a carried folder (``integrity``).

Imports ``export.onnx``, ``measure`` and ``report`` (manifest hashes); never ``quantize``.
"""
