"""The accuracy budget's cheap ranking for ONNX: each weight node's output SQNR, alone, on calibration data.

For every weight node, the part of the fully quantized graph that computes the node's output
from its float inputs is cut out with ``onnx.utils.Extractor`` (QuantizeLinear/DequantizeLinear
of the input and the dequantized weight for static QDQ, DynamicQuantizeLinear + MatMulInteger
for dynamic int8, MatMulNBits for int4) and fed the float graph's own activations; its output
is compared with the float node's. Alone, because comparing the two whole graphs tensor by
tensor (``qdq_loss_debug.create_activation_matching``) measures the error accumulated from
every node upstream and so ranks nodes by depth. ``qdq_loss_debug``'s activation collection is
not used either: it flattens every tensor and keeps all batches, and the pieces need shaped
inputs; the figure is its ``compute_signal_to_quantization_noice_ratio``, summed over batches.
"""

from pathlib import Path

import onnx
from onnx.utils import Extractor

from compress.core import log
from compress.core.errors import first_line
from compress.quant.sqnr import SqnrMeter
from export.onnx.runtime import make_session


def _probe_inputs(node: onnx.NodeProto, initializers: set[str]) -> list[str]:
    return [name for name in node.input if name and name not in initializers]


def _with_outputs(model: onnx.ModelProto, names: list[str], types: dict) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the tensors ``names``."""
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    present = {output.name for output in probed.graph.output}
    probed.graph.output.extend(types[name] for name in names if name not in present)
    return probed


def _value_types(model: onnx.ModelProto) -> dict:
    graph = model.graph
    return {info.name: info for info in [*graph.value_info, *graph.input, *graph.output]}


def node_sqnr(
    float_path: Path, quantized_path: Path, nodes: list[str], feeds: list[dict], work: Path
) -> dict[str, float | None]:
    """Output SQNR (dB) of each of ``nodes`` quantized alone, on the input ``feeds``; files go to ``work``.

    None for a node whose piece of the quantized graph cannot be cut out (its output no longer
    exists there, e.g. fused away); the budget then measures it rather than guess.
    """
    float_model = onnx.load(str(float_path))
    quantized = onnx.load(str(quantized_path))
    types = _value_types(float_model)
    initializers = {init.name for init in float_model.graph.initializer}
    by_name = {node.name: node for node in float_model.graph.node}
    # The float types of the probed tensors, where shape inference left none in the quantized graph.
    known = _value_types(quantized)
    quantized.graph.value_info.extend(info for name, info in types.items() if name not in known)
    extractor = Extractor(quantized)
    pieces, tensors = {}, set()
    for name in nodes:
        node = by_name[name]
        inputs, output = _probe_inputs(node, initializers), node.output[0]
        if not all(t in types for t in [*inputs, output]):
            continue
        path = work / f"sqnr-piece-{len(pieces)}.onnx"
        try:
            onnx.save(extractor.extract_model(inputs, [output]), str(path))
            pieces[name] = (inputs, output, make_session(path))
        except Exception as exc:  # noqa: BLE001  (onnx.utils and onnxruntime raise bare exceptions)
            log.info(f"  sqnr: {name} not measured ({type(exc).__name__}: {first_line(exc)})")
        tensors.update([*inputs, output])
    graph_inputs = {info.name for info in float_model.graph.input}
    probed = work / "sqnr-float.onnx"
    onnx.save(_with_outputs(float_model, sorted(tensors - graph_inputs), types), str(probed))
    session = make_session(probed)
    meters = {name: SqnrMeter() for name in pieces}
    for feed in feeds:
        values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        values.update(feed)
        for name, (inputs, output, piece) in list(pieces.items()):
            try:
                (quantized_output,) = piece.run([output], {t: values[t] for t in inputs})
            except Exception as exc:  # noqa: BLE001  (onnxruntime raises bare exceptions)
                log.info(f"  sqnr: {name} not measured ({type(exc).__name__}: {first_line(exc)})")
                del pieces[name], meters[name]  # measured by the metric instead
                continue
            meters[name].add(values[output], quantized_output)
    return {name: meters[name].db() if name in meters else None for name in nodes}
