"""Quantized ONNX artifacts: ORT's int8/int4 quantizers (``onnx_quant``), the int4 algorithm
table (``int4_algorithms``), per-layer sensitivity (``sensitivity``), QAT's folded artifact
(``qat_artifact``), the record every quantized artifact shares (``records``), the variants of
a recipe (``variants``), and for decoders the weight-only int4/int8 of the decoder graph with its
embedding and LM head (``decoder``) and the ``accuracy_level`` sweep (``int4_levels``).

The top room of ``export``: imports ``onnx``, ``measure``, ``report``, ``runfolder``.
"""
