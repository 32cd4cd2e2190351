"""Which graph a decoder with its KV cache is exported as: ``export.decoder_graph`` of the recipe.

* ``torch``: torch's exporter (``kv_export``), any family transformers can trace with a cache;
* ``genai_builder``: onnxruntime-genai's model builder (``genai_builder``), fused attention, for the
  families it knows; refused with the builder's reason elsewhere;
* ``auto``: the builder where onnxruntime-genai is installed, knows the family and its file matches
  torch (prefill and two greedy steps within the fp32 tolerance, same tokens), else torch. The file's
  facts say which graph was written and, for a fallback, why.
"""

from pathlib import Path
from typing import Any

from export.decoder.families import decoder_shape
from export.decoder.kv_export import DecoderOnnx, export_decoder
from export.errors import ExportError

# ORT 1.32's CPU GroupQueryAttention refuses other head sizes at run time ("head_size shall be a multiple of 16").
GQA_HEAD_MULTIPLE = 16


def _torch(model: Any, path: Path, opset: int) -> tuple[DecoderOnnx, dict]:
    return export_decoder(model, path, opset=opset), {"exporter": "dynamo", "decoder_graph": "torch"}


def _builder(model: Any, path: Path, opset: int) -> tuple[DecoderOnnx, dict]:
    from export.decoder.genai_builder import build_fused, fused_parity
    from export.decoder.genai_folder import genai_type

    shape = decoder_shape(model.config)
    genai_type(shape.model_type)  # a family onnxruntime-genai cannot run is refused before the builder starts
    if shape.head_dim % GQA_HEAD_MULTIPLE:
        raise ExportError(f"ONNX Runtime's CPU GroupQueryAttention needs a head size that is a multiple of "
                          f"{GQA_HEAD_MULTIPLE} (this model: {shape.head_dim})")  # fmt: skip
    made, packed = build_fused(model, path)
    graph = "onnxruntime-genai's builder graph"
    if packed:  # a fault of our packing must not read as the builder's
        graph += f" (with {len(packed)} groups of MatMuls packed by modelpress)"
    try:
        parity = fused_parity(model, path)
    except Exception as exc:  # noqa: BLE001  (ORT refuses shapes its fused kernels lack, e.g. head sizes)
        path.unlink(missing_ok=True)
        why = str(exc).splitlines()[0][-200:]
        raise ExportError(f"{graph} does not run: {why}") from None
    if not parity.ok:
        path.unlink(missing_ok=True)
        gaps = ", ".join(f"{d:.2e} (tolerance {t:.2e})" for d, t in zip(parity.max_abs_diff, parity.tolerance))
        raise ExportError(f"{graph} differs from torch: logits gaps {gaps}")
    facts = {"exporter": "onnxruntime-genai builder", "decoder_graph": "genai_builder", "packed_matmuls": len(packed)}
    return made, facts


def _auto(model: Any, path: Path, opset: int) -> tuple[DecoderOnnx, dict]:
    import importlib.util

    if importlib.util.find_spec("onnxruntime_genai") is None:
        reason = "onnxruntime-genai is not installed (pip install modelpress[llm])"
    else:
        try:
            return _builder(model, path, opset)
        except ExportError as exc:
            reason = str(exc).splitlines()[0]
    made, facts = _torch(model, path, opset)
    return made, {**facts, "decoder_graph_fallback": reason}


GRAPHS = {"torch": _torch, "genai_builder": _builder, "auto": _auto}


def export_with_cache(model: Any, path: Path | str, opset: int, graph: str = "auto") -> tuple[DecoderOnnx, dict]:
    """Export ``model`` with its cache to ``path`` as ``graph`` (see the module docstring)."""
    if graph not in GRAPHS:
        raise ExportError(f"decoder_graph {graph!r}; choose one of {', '.join(GRAPHS)}")
    return GRAPHS[graph](model, Path(path), opset)
