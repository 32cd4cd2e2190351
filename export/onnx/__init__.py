"""torch -> ONNX and back into ONNX Runtime: the exporter (``exporter``), parity against torch
(``validate``), ORT sessions and predictors (``runtime``), an ONNX file checked before ORT opens it
(``untrusted``) and the private working folder ORT's tools write into (``scratch``).

The lowest room of ``export``: imports ``compress.core``, ``recipe`` and ``models`` only.
A decoder's export with its KV cache goes beside ``exporter`` (``export/decoder``).
"""
