"""Causal language models exported WITH their KV cache, and their generation parity in ONNX Runtime.

This package owns the decoder-with-past path of modelpress: the ONNX signature that Optimum and
onnxruntime-genai share (``input_ids``, ``attention_mask``, ``position_ids`` where the family uses
them, ``past_key_values.{i}.key|value`` in; ``logits``, ``present.{i}.key|value`` out), the per-family
facts that signature needs (``families``), the export itself (``kv_export``), greedy-generation
parity against torch (``parity``), perplexity, teacher-forced top-1 and greedy agreement of a
decoder file against its fp32 reference (``perplexity``), the onnxruntime-genai folder
(``genai_folder``) and the experimental onnxscript ORT fusions over the exported graph
(``ort_fusions``). Weight-only int4/int8 of the decoder graph is ``export/quantize/decoder.py``.

May import ``export.errors`` and ``compress.core`` only: ``export.onnx`` and the rooms above call
into it.

Nothing here imports transformers or onnxruntime at import time; they are imported where used.
"""

from export.decoder.families import DecoderShape, decoder_shape, uses_position_ids
from export.decoder.kv_export import DecoderOnnx, export_decoder

__all__ = ["DecoderOnnx", "DecoderShape", "decoder_shape", "export_decoder", "uses_position_ids"]
