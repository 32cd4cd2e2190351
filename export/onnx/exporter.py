"""torch -> ONNX with stable input/output names, a dynamic batch axis and a full check.

We use torch's own exporter (``torch.onnx.export``, dynamo path, the one torch
maintains) and ``onnx.checker`` with ``full_check`` (which also runs shape inference).
"""

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.export import Dim

from compress.core.io import write_atomic
from compress.models.data import first_tensor, flatten_inputs, is_kv_cache, rebuild_inputs
from export.errors import ExportError

# torch's exporter logs one warning per missing torchvision op; they are noise here.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

# Past this size protobuf cannot hold the model in one file.
EXTERNAL_DATA_BYTES = 1_800_000_000
EXTERNAL_DATA = {
    "auto": lambda weight_bytes: weight_bytes > EXTERNAL_DATA_BYTES,
    "always": lambda weight_bytes: True,
    "never": lambda weight_bytes: False,
}


@dataclass(frozen=True)
class OnnxModel:
    path: Path
    input_names: list[str]
    output_names: list[str]
    opset: int


def output_tensors(output: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor of a model output with a stable path: ``""`` for a lone tensor, else the tuple
    index or dict key of each (nested paths joined by ``_``). None entries and key/value caches (HF
    outputs) are skipped: a single forward pass is exported without its cache."""
    if isinstance(output, torch.Tensor):
        return [(prefix, output)]
    if isinstance(output, Mapping):
        items = output.items()
    elif isinstance(output, (tuple, list)):
        items = enumerate(output)
    else:
        return first_tensor(output)  # raises the one-line InputError for unsupported types
    kept = [(key, value) for key, value in items if value is not None and not is_kv_cache(value)]
    return [pair for key, value in kept for pair in output_tensors(value, _join(prefix, key))]


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}_{key}" if prefix else str(key)


def output_names_for(output: Any, base: str) -> list[str]:
    """ONNX output names: ``base`` for a single tensor (so one-output files keep their name), else
    ``base_<path>`` per tensor, stable across exports of the same model."""
    paths = [path for path, _ in output_tensors(output)]
    return [base] if len(paths) == 1 else [_join(base, path) for path in paths]


class _FlatSignature(torch.nn.Module):
    """Takes flat tensors, calls the model with the original input structure, returns its tensors."""

    def __init__(self, model: torch.nn.Module, template: Any):
        super().__init__()
        self.model = model
        self.template = template

    def forward(self, *tensors):
        from compress.models.data import call_model

        outputs = [t for _, t in output_tensors(call_model(self.model, rebuild_inputs(self.template, list(tensors))))]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _axis_names(tensors: list[torch.Tensor]) -> list[dict[int, str]]:
    """Batch axis dynamic everywhere; token ids and masks (integer, 2-D) also vary in length.

    Token tensors of one example length share a length axis (ids and their mask); another length
    is another axis (an encoder-decoder's source and target), so neither is bound to the other.
    """
    lengths: list[int] = []
    names = []
    for tensor in tensors:
        if tensor.dim() == 2 and not tensor.is_floating_point():
            if tensor.shape[1] not in lengths:
                lengths.append(tensor.shape[1])
            index = lengths.index(tensor.shape[1])
            names.append({0: "batch", 1: f"sequence_{index}" if index else "sequence"})
        else:
            names.append({0: "batch"})
    return names


def _dynamic_shapes(tensors: list[torch.Tensor]) -> tuple:
    axes = _axis_names(tensors)
    dims = {name: Dim(name) for spec in axes for name in spec.values()}
    # One entry for the wrapper's ``*tensors`` argument.
    return (tuple({axis: dims[name] for axis, name in spec.items()} for spec in axes),)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _strip_debug_info(path: Path, data_file: str | None) -> None:
    """Drop per-node debug metadata (torch stack traces, with the exporting machine's file paths):
    it leaks local paths into a shipped artifact and adds tens of kB to small models. With
    ``data_file``, the weights are saved there (beside ``path``) as ONNX external data."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    if data_file is None:
        onnx.save(model, str(path))
        return
    for stale in path.parent.glob(f"{path.name}*.data"):  # the exporter's own file, named after tmp
        stale.unlink()
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data_file)


def _dynamo_options(tensors, names, output_names, dynamic_batch: bool, external: bool) -> dict:
    return {
        "dynamic_shapes": _dynamic_shapes(tensors) if dynamic_batch else None,
        "external_data": external,
        "dynamo": True,
        "verbose": False,
    }


def _torchscript_options(tensors, names, output_names, dynamic_batch: bool, external: bool) -> dict:
    axes = {}
    if dynamic_batch:
        axes.update(zip(names, _axis_names(tensors)))
        axes.update({name: {0: "batch"} for name in output_names})
    return {"dynamic_axes": axes or None, "dynamo": False}


# torch's maintained exporter (dynamo) by default; TorchScript (opset <= 20) where a graph must
# match ONNX Runtime's transformer fusion patterns, which it recognises in TorchScript graphs.
EXPORTERS = {"dynamo": _dynamo_options, "torchscript": _torchscript_options}


def to_onnx(
    model: torch.nn.Module,
    example_inputs: Any,
    path: Path,
    opset: int = 18,
    dynamic_batch: bool = True,
    output_name: str = "output",
    exporter: str = "dynamo",
    external_data: str = "auto",
) -> OnnxModel:
    """Export ``model`` to ``path`` (atomically) and check the file; raise ExportError on failure.

    With external data (``always``, or ``auto`` past protobuf's 2 GB limit) the weights go to
    ``<path>.data`` beside the graph, written before the graph so that a present ``.onnx`` is complete.
    """
    import onnx

    from compress.models.data import call_model

    names, tensors = flatten_inputs(example_inputs)
    wrapper = _FlatSignature(model.eval(), example_inputs).eval()
    with torch.no_grad():
        outputs = output_names_for(call_model(model, example_inputs), output_name)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = EXTERNAL_DATA[external_data](weight_bytes)

    def export(tmp: Path) -> None:
        try:
            with warnings.catch_warnings():
                # torch-internal deprecations and notes on shared axis names: not the user's concern.
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.filterwarnings("ignore", message="# The axis name")
                torch.onnx.export(
                    wrapper,
                    tuple(tensors),
                    str(tmp),
                    input_names=names,
                    output_names=outputs,
                    opset_version=opset,
                    **EXPORTERS[exporter](tensors, names, outputs, dynamic_batch, external),
                )
        except Exception as exc:  # noqa: BLE001  (the exporter raises many types; all mean the same)
            raise ExportError(
                f"{type(model).__name__} could not be exported to ONNX (opset {opset}): {_root_cause(exc)}"
            ) from None
        _strip_debug_info(tmp, path.name + ".data" if external else None)
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"the exported ONNX model fails onnx.checker: {str(exc).splitlines()[0]}") from None

        _check_opset(tmp, opset)

    write_atomic(path, export)
    return OnnxModel(path, names, outputs, opset)


def file_opset(path: Path) -> int:
    """The default-domain opset the file imports (what a runtime sees, whatever was asked)."""
    import onnx

    return default_opset(onnx.load(str(path), load_external_data=False))


def default_opset(model) -> int:
    """The default-domain opset ``model`` (an onnx.ModelProto) imports, 0 when it imports none."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _check_opset(path: Path, opset: int) -> None:
    """torch's dynamo exporter writes opset 18 when a lower one cannot be converted; refuse rather
    than label the file with the recipe's number."""
    written = file_opset(path)
    if written != opset:
        raise ExportError(
            f"export.opset {opset} cannot be honoured: the exporter wrote opset {written}; set export.opset: {written}"
        )


def generates(model: torch.nn.Module) -> bool:
    """A Hugging Face decoder that generates text (a causal LM): its artifact is worth a KV cache.
    Encoder-decoders generate too, but their step is another graph: they export one forward pass."""
    can_generate = getattr(model, "can_generate", None)
    config = getattr(model, "config", None)
    return callable(can_generate) and bool(can_generate()) and not getattr(config, "is_encoder_decoder", False)


def export_onnx(
    model: torch.nn.Module,
    example_inputs: Any,
    path: Path,
    opset: int = 18,
    *args: Any,
    exporter: str = "auto",
    kv_cache: bool = False,
    decoder_graph: str = "torch",
    **kwargs: Any,
) -> tuple[OnnxModel, dict]:
    """``to_onnx`` with the exporter choice; returns the file and the facts of which exporter made it.

    ``auto`` tries dynamo first (the maintained exporter) and falls back to TorchScript, which
    traces one concrete run and so survives what torch.export refuses (data-dependent branches,
    views over non-contiguous strides in windowed attention). Both failing raises both causes.
    With ``kv_cache``, a causal LM is exported with its cache (``export.decoder``: one graph for the
    prefill and each decoding step, dynamic axes) by ``decoder_graph`` (``export.decoder.graphs``),
    the rest as above.
    """
    if kv_cache and generates(model):
        from export.decoder.graphs import export_with_cache

        made, facts = export_with_cache(model, path, opset, decoder_graph)
        names = list(made.input_names), list(made.output_names)
        return OnnxModel(path, *names, made.opset), {**facts, "kv_cache": True}
    args = (opset, *args)
    if exporter != "auto":
        return to_onnx(model, example_inputs, path, *args, exporter=exporter, **kwargs), {"exporter": exporter}
    try:
        return to_onnx(model, example_inputs, path, *args, exporter="dynamo", **kwargs), {"exporter": "dynamo"}
    except ExportError as exc:
        reason = str(exc).splitlines()[0]
    try:
        made = to_onnx(model, example_inputs, path, *args, exporter="torchscript", **kwargs)
    except ExportError as exc:
        raise ExportError(f"{reason}; the TorchScript fallback failed too: {str(exc).splitlines()[0]}") from None
    return made, {"exporter": "torchscript", "exporter_fallback": f"dynamo failed: {reason}"}
