"""A sentence-transformers folder around a Hugging Face folder: ``SentenceTransformer(folder)`` loads
the compressed encoder with its pooling, and ``onnx/`` holds the ONNX files under the names its ONNX
backend documents (``onnx/model.onnx``, ``onnx/model_qint8_<cpu>.onnx``).

sentence-transformers' own modules (``Transformer``, ``Pooling``) and ``SentenceTransformer.save``
write ``modules.json``, ``sentence_bert_config.json``, ``1_Pooling/config.json`` and the transformer
files, so the layout is the one that library reads, not a copy of it. Its ONNX backend runs the
transformer alone (token embeddings out, ``last_hidden_state``) and pools in Python, so these ONNX
files are the encoder without the pooling that the run's ``compressed`` artifact ends with. Loading
them through sentence-transformers (``backend="onnx"``) needs optimum-onnx, which pins transformers
below 4.58 and so cannot be installed beside this project's transformers; ONNX Runtime runs them as is.
"""

import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.errors import ExportError

# The wrapper a run's sentence encoder is -> sentence-transformers' pooling mode that reproduces it.
POOLING = {"SentenceEncoder": "mean"}
ONNX_PARITY_ATOL = 1e-4  # token embeddings in ONNX Runtime against torch, fp32


def pooling_mode(wrapper: torch.nn.Module | None) -> str | None:
    return POOLING.get(type(wrapper).__name__) if wrapper is not None else None


def cpu_name() -> str:
    """sentence-transformers' name of this CPU's int8 configuration (``export_dynamic_quantized_onnx_model``:
    arm64, avx2, avx512, avx512_vnni), read from the CPU flags."""
    from compress.quant.isa import VNNI_FLAGS

    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "avx2"
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return "avx512_vnni" if flags & set(VNNI_FLAGS) else "avx512" if "avx512f" in flags else "avx2"


class TokenEmbeddings(torch.nn.Module):
    """The transformer alone, as sentence-transformers' ONNX backend runs it: (ids, mask) -> tokens."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def save_sentence_transformer(hf_folder: Path, folder: Path, mode: str) -> None:
    """``SentenceTransformer(modules=[Transformer(hf_folder), Pooling(mode)]).save(folder)``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    transformer = Transformer(str(hf_folder), model_kwargs={"attn_implementation": "eager"})
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode=mode)
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(folder))
    # Its generated card would describe training it never had; the report writes the card with the run's figures.
    (folder / "README.md").unlink(missing_ok=True)


def _onnx_gap(path: Path, module: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    with torch.no_grad():
        expected = module(**inputs).numpy()
    return float(np.abs(session.run(None, feed)[0] - expected).max())


def write_onnx_files(encoder: torch.nn.Module, folder: Path, inputs: dict[str, torch.Tensor], export, int8: Any):
    """``onnx/model.onnx`` (exported with the recipe's ``export`` opset and exporter, checked against torch
    in ONNX Runtime) and, when ``int8`` (the run's int8
    dynamic variant spec, or None) is given, ``onnx/model_qint8_<cpu>.onnx`` quantized as that variant
    is. Returns the files' names relative to ``folder``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from compress.quant.isa import reduce_range
    from export.onnx.exporter import export_onnx

    module = TokenEmbeddings(encoder).eval()
    fp32 = folder / "onnx" / "model.onnx"
    fp32.parent.mkdir(exist_ok=True)
    feed = {name: inputs[name] for name in ("input_ids", "attention_mask")}
    export_onnx(module, feed, fp32, export.opset, exporter=export.exporter, output_name="last_hidden_state")
    gap = _onnx_gap(fp32, module, feed)
    if not gap <= ONNX_PARITY_ATOL:
        raise ExportError(f"onnx/model.onnx differs from torch (max |diff| {gap:.2e} > {ONNX_PARITY_ATOL})")
    written = [str(fp32.relative_to(folder))]
    if int8 is not None:
        # The weights' type names the file, as sentence-transformers' own int8 export names it.
        quantized = fp32.with_name(f"model_qint8_{cpu_name()}.onnx")
        quantize_dynamic(
            str(fp32),
            str(quantized),
            per_channel=bool(getattr(int8, "per_channel", True)),
            reduce_range=reduce_range(getattr(int8, "reduce_range", "auto")),
            weight_type=QuantType.QInt8,
        )
        written.append(str(quantized.relative_to(folder)))
    return written
