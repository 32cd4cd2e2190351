"""An onnxruntime-genai model folder from an exported decoder-with-past.

The folder holds ``model.onnx`` (our graph, unchanged), ``genai_config.json`` and, when a
tokenizer is given, the files ``save_pretrained`` writes (``tokenizer.json`` and its config, which
onnxruntime-genai's tokenizer reads). The config follows what onnxruntime-genai's own model
builder writes (``onnxruntime_genai/models/builders/base.py: make_genai_config`` in 0.18):
``model.decoder`` names the inputs and the ``%d`` patterns of past/present, gives the head counts
and sizes, ``model`` the special token ids, ``search`` the generation defaults.

``past_present_share_buffer`` is true only for a graph with GroupQueryAttention (the builder's,
``genai_builder``), which updates a fixed-size cache in place, as the builder's own config says;
torch's graph concatenates past and new keys (present grows by the new tokens) and needs it false.
The decoder's input names are read from the file, so either graph is described as it is.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any

from export.decoder.families import DecoderShape, decoder_shape, text_config
from export.decoder.kv_export import DecoderOnnx, export_decoder
from export.errors import ExportError

# Hugging Face model_type -> onnxruntime-genai model type. onnxruntime-genai picks its decoder
# pipeline from this name and refuses names it does not know ("Unsupported model_type"); 0.18 has
# no type for OPT, GPT-NeoX, Falcon or BLOOM, so those stay ONNX-only.
GENAI_TYPES: dict[str, str] = {
    name: name for name in ("llama", "mistral", "qwen2", "gemma", "gemma2", "phi3", "granite", "olmo", "nemotron")
}

# onnxruntime-genai finds layer i's cache tensors by these printf patterns (kv_export's names).
PAST_PATTERNS = {"past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
PRESENT_PATTERNS = {"present_key_names": "present.%d.key", "present_value_names": "present.%d.value"}

# generate()'s defaults, overridden by the model's generation_config where it sets a value.
SEARCH_DEFAULTS: dict[str, Any] = {
    "diversity_penalty": 0.0,
    "do_sample": False,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "num_beams": 1,
    "num_return_sequences": 1,
    "repetition_penalty": 1.0,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
}


def genai_type(model_type: str) -> str:
    if model_type not in GENAI_TYPES:
        raise ExportError(f"onnxruntime-genai has no decoder type for {model_type!r} (known: {', '.join(GENAI_TYPES)})")
    return GENAI_TYPES[model_type]


def _decoder_section(decoder: DecoderOnnx, shape: DecoderShape) -> dict[str, Any]:
    inputs = {name: name for name in ("input_ids", "attention_mask", "position_ids") if name in decoder.input_names}
    return {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": decoder.path.name,
        "head_size": shape.head_dim,
        "hidden_size": shape.hidden_size,
        "inputs": {**inputs, **PAST_PATTERNS},
        "outputs": {"logits": "logits", **PRESENT_PATTERNS},
        "num_attention_heads": shape.num_attention_heads,
        "num_hidden_layers": shape.num_layers,
        "num_key_value_heads": shape.num_kv_heads,
    }


def _search_section(generation_config: Any, context_length: int, share_buffer: bool = False) -> dict[str, Any]:
    search = {key: getattr(generation_config, key, None) for key in SEARCH_DEFAULTS}
    search = {key: default if search[key] is None else search[key] for key, default in SEARCH_DEFAULTS.items()}
    return {
        **search,
        "early_stopping": True,
        "max_length": context_length,
        "min_length": 0,
        "past_present_share_buffer": share_buffer,  # see the module docstring
    }


def _first_set(attribute: str, *sources: Any) -> Any:
    for source in sources:
        value = getattr(source, attribute, None) if source is not None else None
        if value is not None:
            return value
    return None


def genai_config(
    decoder: DecoderOnnx, config: Any, generation_config: Any = None, share_buffer: bool = False
) -> dict[str, Any]:
    """The genai_config.json content for ``decoder`` exported from a model with ``config``."""
    shape = decoder_shape(config)
    text = text_config(config)
    # generation_config wins over the model config, as in generate() and onnxruntime-genai's builder.
    tokens = {key: _first_set(f"{key}_token_id", generation_config, text) for key in ("bos", "eos", "pad")}
    if tokens["eos"] is None:
        raise ExportError(f"{shape.model_type}: onnxruntime-genai needs an eos_token_id; the config has none")
    eos = tokens["eos"]
    first_eos = eos[0] if isinstance(eos, list) else eos
    return {
        "model": {
            "bos_token_id": tokens["bos"] if tokens["bos"] is not None else first_eos,
            "context_length": shape.context_length,
            "decoder": _decoder_section(decoder, shape),
            "eos_token_id": eos,
            "pad_token_id": tokens["pad"] if tokens["pad"] is not None else first_eos,  # generate()'s fallback too
            "type": genai_type(shape.model_type),
            "vocab_size": shape.vocab_size,
        },
        "search": _search_section(generation_config, shape.context_length, share_buffer),
    }


def write_genai_folder(
    model: Any, folder: Path | str, tokenizer: Any = None, *, decoder: DecoderOnnx | None = None, opset: int = 18
) -> Path:
    """Write ``folder`` for onnxruntime-genai: export ``model`` (or copy an existing ``decoder``
    file), then genai_config.json and the tokenizer files. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    genai_type(decoder_shape(model.config).model_type)  # refuse before a long export
    target = folder / "model.onnx"
    if decoder is None:
        decoder = export_decoder(model, target, opset=opset)
    elif decoder.path != target:
        shutil.copyfile(decoder.path, target)
        decoder = DecoderOnnx(**{**decoder.__dict__, "path": target})
    config = genai_config(decoder, model.config, getattr(model, "generation_config", None))
    (folder / "genai_config.json").write_text(json.dumps(config, indent=4) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder


def _link(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (no second copy of the weights), copied where links fail."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def genai_folder_for(onnx_path: Path, folder: Path, model: Any, tokenizer: Any = None) -> Path:
    """An onnxruntime-genai folder around a decoder file already written (the float artifact or a
    quantized one: the same inputs and outputs): the file linked in as ``model.onnx`` with its external
    data, ``genai_config.json`` from ``model``'s config, and the tokenizer files when given."""
    genai_type(decoder_shape(model.config).model_type)  # refuse before writing anything
    folder.mkdir(parents=True, exist_ok=True)
    _link(onnx_path, folder / "model.onnx")
    data = onnx_path.with_name(onnx_path.name + ".data")
    if data.exists():  # the graph names its data file by the artifact's name: keep that name
        _link(data, folder / data.name)
    import onnx

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    decoder = DecoderOnnx.of(folder / "model.onnx", model, opset=0)  # the opset is not read by the config
    decoder = DecoderOnnx(**{**decoder.__dict__, "input_names": tuple(value.name for value in graph.graph.input)})
    share = any(node.op_type == "GroupQueryAttention" for node in graph.graph.node)
    config = genai_config(decoder, model.config, getattr(model, "generation_config", None), share)
    (folder / "genai_config.json").write_text(json.dumps(config, indent=4) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder
