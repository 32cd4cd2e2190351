"""An ONNX file from a folder modelpress did not write this run, checked before ONNX Runtime sees it.

ONNX Runtime reads what a file declares: external data at any path, custom-op domains whose code it
would look for, tensors of any declared size (a few bytes declaring terabytes). ``refusal`` reads the
file's graph (never its external data) and says why it must not be opened; ``checked_session`` also
names ONNX Runtime's own refusal. Both are "artifact failed" (exit 1), never a crash.
"""

import math
from pathlib import Path

from compress.core.errors import ModelpressError
from compress.core.untrusted import escape, inside, open_read, regular

# The op domains modelpress's exporters and quantizers write, and ONNX Runtime implements itself.
DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "org.pytorch.aten"}
# One tensor (an initializer, or what a ConstantOfShape makes): far above any model this tool compresses.
MAX_TENSOR_BYTES = 16 << 30


class ArtifactRefused(ModelpressError):
    """An artifact file ONNX Runtime must not (or would not) open: the artifact fails, exit 1."""

    exit_code = 1


def _nodes(graph):
    """Every node, those of subgraphs (If, Loop, Scan bodies) included."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in [attribute.g, *attribute.graphs]:
                yield from _nodes(sub)


def _declared_bytes(tensor) -> int:
    """The bytes ``tensor``'s shape and type take as ONNX stores them: sub-byte types (int4, uint4,
    float4, int2, uint2) packed into whole bytes, the last one padded."""
    import onnx

    count = math.prod(max(d, 0) for d in tensor.dims)
    packed = {name: bits for name, bits in SUB_BYTE_BITS.items() if hasattr(onnx.TensorProto, name)}
    bits = {getattr(onnx.TensorProto, name): b for name, b in packed.items()}.get(tensor.data_type)
    if bits is not None:
        return (count * bits + 7) // 8
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize if tensor.data_type else 1
    return count * itemsize


# Element types narrower than a byte (names as onnx.TensorProto spells them; newer ones where defined).
SUB_BYTE_BITS = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2}


def _external(tensor, path: Path) -> str | None:
    """Why ``tensor``'s external data may not be read: outside the artifact's folder, a link, or shorter."""
    entries = {e.key: e.value for e in tensor.external_data}
    where = inside(path.parent, entries.get("location", ""), f"external data of {tensor.name}")
    info = regular(where, "external data file")
    if info is None:
        return f"external data {entries.get('location')!r} of {tensor.name} is missing"
    end = int(entries.get("offset", 0) or 0) + int(entries.get("length", 0) or _declared_bytes(tensor))
    if end > info.st_size:
        return f"external data of {tensor.name} declares bytes past the end of {entries.get('location')!r}"
    return None


def _tensor(tensor, path: Path) -> str | None:
    import onnx

    declared = _declared_bytes(tensor)
    if declared > MAX_TENSOR_BYTES:
        return f"tensor {tensor.name!r} declares {declared} bytes (over {MAX_TENSOR_BYTES})"
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return _external(tensor, path)
    if tensor.raw_data and len(tensor.raw_data) != declared:
        return f"tensor {tensor.name!r} declares {declared} bytes and holds {len(tensor.raw_data)}"
    return None


def _made_by_constant_of_shape(node, constants: dict) -> int:
    from onnx import numpy_helper

    shape = constants.get(node.input[0]) if node.input else None
    if shape is None or _declared_bytes(shape) > 1 << 12:
        return 0  # a shape computed at run time: ONNX Runtime bounds it by the inputs it is fed
    return math.prod(int(d) for d in numpy_helper.to_array(shape).reshape(-1)) * 4


def refusal(path: Path) -> str | None:
    """Why the ONNX file at ``path`` must not be given to ONNX Runtime, read from the file; None if nothing."""
    import onnx

    with open_read(path, "ONNX artifact") as handle:
        model = onnx.load_model_from_string(handle.read())
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    for tensor in graph.initializer:
        reason = _tensor(tensor, path)
        if reason:
            return reason
    for node in _nodes(graph):
        if node.domain not in DOMAINS:
            return f"op {node.domain}::{node.op_type} is of a domain ONNX Runtime does not implement (custom op code)"
        for attribute in node.attribute:
            if attribute.HasField("t") and (reason := _tensor(attribute.t, path)):
                return reason
        if node.op_type == "ConstantOfShape" and _made_by_constant_of_shape(node, constants) > MAX_TENSOR_BYTES:
            return f"ConstantOfShape {node.name!r} makes a tensor over {MAX_TENSOR_BYTES} bytes"
    return None


def checked_session(path: Path, threads: int | None = None, provider: str = "CPUExecutionProvider"):
    """``make_session`` on a file checked first; ``ArtifactRefused`` with the reason when it may not
    be opened, or when ONNX Runtime refuses it (its message named)."""
    from export.onnx.runtime import make_session

    try:
        reason = refusal(path)
    except ModelpressError as exc:  # a link, a FIFO, external data leaving the folder
        reason = str(exc).splitlines()[0]
    except Exception as exc:  # noqa: BLE001  (protobuf and onnx raise many types for a corrupt file)
        reason = f"not a readable ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if reason is None:
        try:
            return make_session(path, threads, provider)
        except Exception as exc:  # noqa: BLE001  (onnxruntime's pybind errors have no common base but Exception)
            reason = f"ONNX Runtime refused it ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
    raise ArtifactRefused(f"{escape(path)}: {escape(reason)}")
