"""A Hugging Face causal LM -> one ONNX decoder WITH its KV cache (the Optimum / onnxruntime-genai signature).

Inputs: ``input_ids`` int64 [batch, sequence], ``attention_mask`` int64 [batch, total_sequence]
(past + new tokens), ``position_ids`` int64 [batch, sequence] where the family uses positions (see
``families.uses_position_ids``), and per layer ``past_key_values.{i}.key`` / ``.value``
[batch, kv_heads, past_sequence, head_dim]. Outputs: ``logits`` [batch, sequence, vocab] and
``present.{i}.key`` / ``.value`` [batch, kv_heads, past_sequence + sequence, head_dim].

One graph serves prefill (past of length 0) and decode (sequence 1): the past axis is dynamic and
ONNX Runtime accepts an empty past, so there is no separate with/without-past file to merge.

The graph is made by torch's maintained exporter (``torch.onnx.export(dynamo=True)``) from a
wrapper that takes the past as flat tensors, rebuilds the transformers cache object from them
(``DynamicCache(ddp_cache_data)``), calls the model and flattens the returned cache again.
"""

import inspect
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.export import Dim

from compress.core.io import write_atomic
from export.decoder.families import decoder_shape, uses_position_ids
from export.errors import ExportError

logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

# Example sizes for tracing: all different and above 1, so torch.export neither specialises an
# axis (it fixes axes whose example is 0 or 1) nor unifies two of them by coincidence.
EXAMPLE_BATCH, EXAMPLE_SEQUENCE, EXAMPLE_PAST = 2, 3, 5
# Past this size protobuf cannot hold the model in one file.
EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclass(frozen=True)
class DecoderOnnx:
    """What a caller needs to drive the exported decoder without re-reading the model."""

    path: Path
    model_type: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dtype: str  # of the past/present tensors and logits, numpy spelling ("float32")
    opset: int

    @classmethod
    def of(cls, path: Path, model: torch.nn.Module, opset: int) -> "DecoderOnnx":
        """The file ``export_decoder`` writes for ``model`` (or wrote: a quantized copy has the same I/O)."""
        shape = decoder_shape(model.config)
        names = ["input_ids", "attention_mask"] + (["position_ids"] if uses_position_ids(model) else [])
        return cls(
            path=path,
            model_type=shape.model_type,
            num_layers=shape.num_layers,
            num_kv_heads=shape.num_kv_heads,
            head_dim=shape.head_dim,
            vocab_size=shape.vocab_size,
            input_names=(*names, *past_names(shape.num_layers, "past_key_values")),
            output_names=("logits", *past_names(shape.num_layers, "present")),
            dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
            opset=opset,
        )

    @property
    def uses_position_ids(self) -> bool:
        return "position_ids" in self.input_names

    @property
    def past_names(self) -> tuple[str, ...]:
        return past_names(self.num_layers, "past_key_values")

    @property
    def present_names(self) -> tuple[str, ...]:
        return past_names(self.num_layers, "present")


def past_names(num_layers: int, prefix: str) -> tuple[str, ...]:
    """``{prefix}.{i}.key``, ``{prefix}.{i}.value`` for each layer, key first (the flat order)."""
    return tuple(f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value"))


def cache_argument(model: torch.nn.Module) -> str:
    """transformers 5 renamed the forward's ``past_key_values`` to ``cache`` (the old name is a
    deprecated alias until 5.40); use whichever this version's forward declares."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def build_cache(past: tuple[torch.Tensor, ...]) -> Any:
    """A DynamicCache holding ``past`` (flat key, value per layer).

    ``DynamicCache(ddp_cache_data=[(k, v), ...])`` without ``config``: every layer is a plain
    ``DynamicLayer`` that keeps the full past, so presents are always past + sequence long (the
    fixed layout ORT and onnxruntime-genai expect). Sliding-window families still attend within
    their window: the mask functions read ``config.sliding_window``, not the cache layer type.
    """
    from transformers.cache_utils import DynamicCache

    return DynamicCache([(past[i], past[i + 1]) for i in range(0, len(past), 2)])


def _flat_present(cache: Any) -> list[torch.Tensor]:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise ExportError(f"the model returned {type(cache).__name__}, not a transformers Cache with .layers")
    return [tensor for layer in layers for tensor in (layer.keys, layer.values)]


class _WithPast(torch.nn.Module):
    """Flat-tensor signature around a causal LM: (ids, mask, [positions], *past) -> (logits, *present)."""

    def __init__(self, model: torch.nn.Module, with_positions: bool):
        super().__init__()
        self.model = model
        self.with_positions = with_positions
        self.cache_argument = cache_argument(model)

    def forward(self, input_ids, attention_mask, *rest):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.with_positions:
            kwargs["position_ids"], rest = rest[0], rest[1:]
        kwargs[self.cache_argument] = build_cache(rest)
        out = self.model(**kwargs, use_cache=True, return_dict=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        return (out.logits, *_flat_present(cache))


def _example_inputs(shape, with_positions: bool, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    batch, sequence, past = EXAMPLE_BATCH, EXAMPLE_SEQUENCE, EXAMPLE_PAST
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape.vocab_size, (batch, sequence), generator=generator)
    mask = torch.ones(batch, past + sequence, dtype=torch.int64)
    mask[0, 0] = 0  # a left-padded row, so nothing is traced under the assumption of no padding
    tensors = [ids, mask]
    if with_positions:
        tensors.append((mask.cumsum(-1) - 1).clamp(min=0)[:, past:])
    kv = (batch, shape.num_kv_heads, past, shape.head_dim)
    tensors += [torch.randn(kv, generator=generator).to(dtype) for _ in range(2 * shape.num_layers)]
    return tuple(tensors)


def _dynamic_shapes(with_positions: bool, num_layers: int) -> tuple:
    """Named dynamic axes. ``total_sequence`` is its own Dim: torch.export cannot declare it as
    past + sequence, and the graph never needs the equation (the mask is sliced, not asserted)."""
    batch, sequence = Dim("batch"), Dim("sequence")
    past, total = Dim("past_sequence"), Dim("total_sequence")
    token = {0: batch, 1: sequence}
    rest = ([token] if with_positions else []) + [{0: batch, 2: past} for _ in range(2 * num_layers)]
    return (token, {0: batch, 1: total}, tuple(rest))  # the wrapper's (input_ids, attention_mask, *rest)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _finalise(tmp: Path, path: Path, external: bool) -> None:
    """Drop per-node debug metadata (stack traces naming this machine's paths), save to ``path``
    (weights to ``<name>.data`` beside it past protobuf's limit) and run the full checker."""
    import onnx

    model = onnx.load(str(tmp))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    if external:
        data = path.name + ".data"
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data)
    else:
        write_atomic(path, lambda target: onnx.save(model, str(target)))  # a reader never sees half a file
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001  (the checker raises several types; all mean the same)
        raise ExportError(f"the exported decoder fails onnx.checker: {str(exc).splitlines()[0]}") from None


def _run_exporter(wrapper: torch.nn.Module, inputs: tuple, tmp: Path, names: list[str], outputs: list[str], **options):
    with warnings.catch_warnings():
        # torch-internal deprecations and notes on shared axis names: not the user's concern.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="# The axis name")
        torch.onnx.export(
            wrapper, inputs, str(tmp), input_names=names, output_names=outputs, dynamo=True, verbose=False, **options
        )


def export_decoder(model: torch.nn.Module, path: Path | str, *, opset: int = 18) -> DecoderOnnx:
    """Export a causal LM with its KV cache to ``path``; raise ExportError (one line, naming the
    family) when the exporter or the checker refuses it."""
    path = Path(path)
    shape = decoder_shape(model.config)
    with_positions = uses_position_ids(model)
    dtype = next(model.parameters()).dtype
    planned = DecoderOnnx.of(path, model, opset)
    names, outputs = list(planned.input_names), list(planned.output_names)
    wrapper = _WithPast(model.eval(), with_positions).eval()
    inputs = _example_inputs(shape, with_positions, dtype)
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad():
            _run_exporter(
                wrapper,
                inputs,
                tmp,
                names,
                outputs,
                opset_version=opset,
                dynamic_shapes=_dynamic_shapes(with_positions, shape.num_layers),
                external_data=external,
            )
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001  (the exporter raises many types; all mean the same)
        raise ExportError(
            f"{shape.model_type} ({type(model).__name__}) could not be exported with its KV cache: {_root_cause(exc)}"
        ) from None
    try:
        _finalise(tmp, path, external)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".data")):
            if leftover.exists():
                os.remove(leftover)
    return planned
