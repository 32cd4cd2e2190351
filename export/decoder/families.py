"""Per-family facts a decoder-with-past export needs, kept as data rather than branches.

Two things differ between Hugging Face decoder families and matter to the ONNX signature:

* where the config keeps the cache geometry (layer count, key/value heads, head size). Most
  configs answer the standard names directly (``attribute_map`` maps BLOOM's ``n_layer`` to
  ``num_hidden_layers``; Falcon's ``num_key_value_heads`` property folds in ``multi_query``), so the
  table below lists candidate keys per field, as Optimum's ``NormalizedTextConfig`` does.
* whether ``position_ids`` is an input. We follow Optimum (``TextDecoderWithPositionIdsOnnxConfig``):
  a family takes it when its forward does, except BLOOM (ALiBi, no positions) and Falcon with
  ``alibi=True``; onnxruntime-genai likewise feeds ``position_ids`` only when the graph has it.
"""

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from export.errors import ExportError

# Candidate config keys per field, tried in order. ``None`` as the last entry means "derive"
# (see _DERIVED): kv heads default to the attention heads (no GQA), head_dim to hidden / heads.
CONFIG_KEYS: dict[str, tuple[str | None, ...]] = {
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "num_attention_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "num_kv_heads": ("num_key_value_heads", "num_kv_heads", "multi_query_group_num", None),
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "head_dim": ("head_dim", "kv_channels", None),
    "vocab_size": ("vocab_size", "padded_vocab_size"),
    "context_length": ("max_position_embeddings", "n_positions", "seq_length", "max_seq_len", None),
}

# Per model_type replacements of CONFIG_KEYS entries, for configs whose standard name means
# something else. Empty today: the nine tested families all answer the standard names.
FAMILY_CONFIG_KEYS: dict[str, dict[str, tuple[str | None, ...]]] = {}

_DERIVED: dict[str, Callable[[dict[str, Any]], Any]] = {
    "num_kv_heads": lambda known: known["num_attention_heads"],
    "head_dim": lambda known: known["hidden_size"] // known["num_attention_heads"],
    # ALiBi families (BLOOM) have no position table; onnxruntime-genai still wants a number.
    "context_length": lambda known: 2048,
}

# model_type -> does the ONNX graph take position_ids (given the config). Families not listed
# take it exactly when their forward has a ``position_ids`` parameter.
POSITION_IDS: dict[str, Callable[[Any], bool]] = {
    "bloom": lambda config: False,  # ALiBi from the attention mask; forward has no position_ids
    "falcon": lambda config: not getattr(config, "alibi", False),  # Optimum drops it for ALiBi Falcons
}


@dataclass(frozen=True)
class DecoderShape:
    """The cache geometry and sizes of one decoder, read from its config."""

    model_type: str
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    hidden_size: int
    head_dim: int
    vocab_size: int
    context_length: int


def text_config(config: Any) -> Any:
    """The decoder's own config (multimodal configs nest it); the config itself otherwise."""
    getter = getattr(config, "get_text_config", None)
    return getter(decoder=True) if getter is not None else config


def _read(config: Any, field: str, keys: tuple[str | None, ...], known: dict[str, Any]) -> Any:
    for key in keys:
        if key is None:
            return _DERIVED[field](known)
        value = getattr(config, key, None)
        if value is not None:
            return value
    model_type = getattr(config, "model_type", type(config).__name__)
    raise ExportError(f"{model_type} config has none of {', '.join(k for k in keys if k)} (needed for {field})")


def decoder_shape(config: Any) -> DecoderShape:
    """Normalise ``config`` into a DecoderShape; ExportError names the key a field could not be read from."""
    config = text_config(config)
    model_type = getattr(config, "model_type", "") or type(config).__name__
    keys = {**CONFIG_KEYS, **FAMILY_CONFIG_KEYS.get(model_type, {})}
    known: dict[str, Any] = {}
    for field, candidates in keys.items():  # dict order: heads and hidden size come before derivations
        known[field] = _read(config, field, candidates, known)
    return DecoderShape(model_type=model_type, **{field: int(value) for field, value in known.items()})


def uses_position_ids(model: Any) -> bool:
    """Whether the exported graph takes ``position_ids`` (the Optimum convention, see module doc)."""
    config = text_config(model.config)
    rule = POSITION_IDS.get(getattr(config, "model_type", ""))
    if rule is not None:
        return rule(config)
    return "position_ids" in inspect.signature(model.forward).parameters
