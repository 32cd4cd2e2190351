"""onnxruntime-genai's model builder as the exporter of a decoder's fused fp32 graph.

The builder (``python -m onnxruntime_genai.models.builder -p fp32 -e cpu``) writes the graph ONNX
Runtime's own generation stack is tuned for: GroupQueryAttention with the rotary embedding inside
(cos/sin caches as initializers), SkipSimplifiedLayerNormalization, q/k/v packed into one MatMul; the
gate and up projections are packed here too (``sibling_matmuls``).
torch's exporter gives the same model as dozens of small ops per layer (rotary, mask, repeat_kv), and
onnxscript's ORT fusions (``ort_fusions``) stop short of GroupQueryAttention on it; on SmolLM2 the
builder's graph decodes faster at every precision (``reports/benchmarks/smollm2.md``). So modelpress
uses the maintained builder where it knows the family, rather than a fusion of its own, and checks the
result against torch (prefill and greedy steps) before keeping it; ``exporter.export_onnx`` falls
back to torch's export where the builder refuses the family or that check fails.

The builder reads a Hugging Face folder: the torch model (pruned or not) is saved with
``save_pretrained`` into the system temp folder, with a placeholder word-level tokenizer of the
model's vocabulary when none is given (the builder insists on loading one; the run's generation folder
gets the real tokenizer later). Its cache axis ``kv_cache_dim`` is written as the head size, so the
file has the same fixed head axis as torch's export and every reader feeds it alike.
"""

import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from compress.core.io import write_atomic
from export.decoder.families import decoder_shape
from export.decoder.kv_export import DecoderOnnx
from export.decoder.sibling_matmuls import default_opset, pack_sibling_matmuls
from export.errors import ExportError

# How long the builder may take before it is called stuck (it runs offline; 135M parameters take ~1 min).
BUILDER_TIMEOUT_S = 3600


def _placeholder_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer over ``vocab_size`` ids: only so the builder's AutoTokenizer load succeeds."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<{i}>": i for i in range(vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<0>"))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<0>")


def _run_builder(folder: Path, out: Path, cache: Path) -> None:
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o", str(out)]
    command += ["-p", "fp32", "-e", "cpu", "-c", str(cache)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=BUILDER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ExportError(f"onnxruntime-genai's builder ran past {BUILDER_TIMEOUT_S} s") from None
    if done.returncode != 0 or not (out / "model.onnx").exists():
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise ExportError(f"onnxruntime-genai's builder failed: {lines[-1] if lines else f'exit {done.returncode}'}")


def _fix_head_axis(model: Any, head_dim: int) -> None:
    """The builder's named cache axis ``kv_cache_dim`` -> ``head_dim`` on every past/present tensor."""
    for value in [*model.graph.input, *model.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == "kv_cache_dim":
                dim.dim_value = head_dim


def build_fused(model: Any, path: Path | str, tokenizer: Any = None) -> tuple[DecoderOnnx, list[str]]:
    """Write ``path``: ``model``'s fp32 decoder-with-past as onnxruntime-genai's builder makes it (one file,
    weights inside), its sibling MatMuls packed (``sibling_matmuls``: the gate and up projections);
    returns the file and the packed MatMuls' names. Raises ExportError with the builder's last line when
    it refuses the model."""
    import onnx

    path = Path(path)
    shape = decoder_shape(model.config)
    with tempfile.TemporaryDirectory(prefix="modelpress-builder-") as scratch:
        work = Path(scratch)
        folder, out = work / "hf", work / "out"
        try:
            model.save_pretrained(str(folder), safe_serialization=True)
        except Exception as exc:  # noqa: BLE001  (transformers refuses some models, e.g. still marked quantized)
            why = str(exc).splitlines()[0]
            raise ExportError(f"the builder reads a saved folder and save_pretrained refused: {why}") from None
        (tokenizer or _placeholder_tokenizer(shape.vocab_size)).save_pretrained(str(folder))
        _run_builder(folder, out, work / "cache")
        graph = onnx.load(str(out / "model.onnx"))  # the weights come in from model.onnx.data
        _fix_head_axis(graph, shape.head_dim)
        packed = pack_sibling_matmuls(graph)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda target: onnx.save(graph, str(target)))
    opset = default_opset(graph)
    names = {
        "input_names": tuple(v.name for v in graph.graph.input),
        "output_names": tuple(v.name for v in graph.graph.output),
    }
    made = dataclasses.replace(DecoderOnnx.of(path, model, opset), **names)  # the builder's names, not torch's
    return made, packed


def fused_parity(model: Any, path: Path, steps: int = 2) -> Any:
    """The builder's file against torch on two random prompts: prefill and ``steps`` greedy steps."""
    import torch

    from export.decoder.parity import generation_parity, onnx_session

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, decoder_shape(model.config).vocab_size, (2, 7), generator=generator)
    return generation_parity(model, onnx_session(path), ids, torch.ones_like(ids), steps)
