"""Quantized ONNX artifacts: ORT's int8/int4 quantizers (``onnx_quant``), the int4 algorithm
table (``int4_algorithms``), per-layer sensitivity (``sensitivity``), QAT's folded artifact
(``qat_artifact``), the record every quantized artifact shares (``records``) and the variants of
a recipe (``variants``).

The top room of ``export``: imports ``onnx``, ``measure``, ``report``, ``runfolder``.
"""
