"""What re-measurement needs, stored in the run folder as ``.npz`` (numpy only, never pickle).

``artifacts/heldout.npz`` holds a bounded sample of the held-out (eval) batches: each batch's model
inputs under their flattened ONNX names, and its labels when the metric is a built-in evaluator.
``artifacts/<source>.reference.npz`` holds the torch outputs of an artifact's torch source on those
inputs. ``modelpress report DIR`` then scores the metric, and checks parity against the stored
reference, from the folder alone: no code named by the folder is imported.
"""

import dataclasses
import hashlib
import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.core.errors import InputError
from compress.core.io import read_json, write_atomic
from compress.core.untrusted import escape, read_bytes
from compress.models.data import TaskData, arrange_inputs, flatten_inputs, input_kind
from compress.models.evaluate import EVALUATORS, Evaluator

FORMAT = "modelpress.evidence/1"
# The stored sample is bounded so that a run folder stays small enough to carry to another machine.
MAX_ROWS = 256
MAX_BYTES = 16 * 1024 * 1024
SEP = "__"  # key = b<batch>__g<group>__<input name>: names come from flatten_inputs, no "__" in practice
HELDOUT = "heldout.npz"
# What ``report`` reads back of one .npz: the sample's bound with room for its one-batch minimum and
# for the reference outputs (a model's outputs can be wider than its inputs). A file past it, or
# declaring more in its headers, is refused before anything is loaded.
MAX_READ_BYTES = 4 * MAX_BYTES


def heldout_path(out_dir: Path) -> Path:
    return out_dir / "artifacts" / HELDOUT


def reference_path(out_dir: Path, source: str) -> Path:
    return out_dir / "artifacts" / f"{source}.reference.npz"


def _arrays(inputs: Any) -> dict[str, np.ndarray]:
    names, tensors = flatten_inputs(inputs)
    return {n: torch.as_tensor(t).detach().cpu().numpy() for n, t in zip(names, tensors)}


def store_heldout(out_dir: Path, evaluator: Evaluator, data: TaskData, metric: Any) -> Path:
    """Write up to MAX_ROWS rows / MAX_BYTES of the eval batches (at least one batch) with their labels."""
    builtin = isinstance(metric, str) and metric in EVALUATORS
    arrays: dict[str, np.ndarray] = {}
    kinds: list[str] = []
    rows = size = count = 0
    for index, batch in enumerate(data.batches("eval")):
        groups = evaluator.inputs_of(batch)
        batch_arrays = {}
        kinds = kinds or [input_kind(inputs) for inputs in groups]
        for g, inputs in enumerate(groups):
            batch_arrays.update({f"b{index}{SEP}g{g}{SEP}{n}": a for n, a in _arrays(inputs).items()})
        if builtin:
            batch_arrays[f"b{index}{SEP}labels"] = torch.as_tensor(batch[-1]).cpu().numpy()
        first = next(iter(batch_arrays.values()))
        batch_rows = first.shape[0] if first.ndim else 1  # a 0-d input is one row
        batch_size = sum(a.nbytes for a in batch_arrays.values())
        if count and (rows + batch_rows > MAX_ROWS or size + batch_size > MAX_BYTES):
            break
        arrays.update(batch_arrays)
        rows, size, count = rows + batch_rows, size + batch_size, count + 1
    meta = {
        "format": FORMAT,
        "metric": metric if isinstance(metric, str) else getattr(metric, "__name__", "custom"),
        "builtin_metric": builtin,
        "is_classifier": evaluator.is_classifier,
        "higher_is_better": evaluator.higher_is_better,
        "kinds": kinds,
        "batches": count,
        "rows": rows,
        "bound": {"max_rows": MAX_ROWS, "max_bytes": MAX_BYTES},
    }
    path = heldout_path(out_dir)
    _save(path, {**arrays, "__meta__": np.array(json.dumps(meta))})
    return path


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle: given a path, np.savez would append ".npz" to tmp's name
            np.savez(handle, **arrays)

    write_atomic(path, write)


def load_npz(path: Path, out_dir: Path) -> dict[str, np.ndarray]:
    """Every array of a stored ``.npz``; one line (what, where, how to fix) when missing or unreadable."""
    fix = "re-run 'modelpress run' to write it again"
    raw = read_bytes(path, MAX_READ_BYTES, ".npz evidence")  # no link, no FIFO, bounded
    if raw is None:
        raise InputError(f"{path}: missing; modelpress report needs it to re-measure without running code; {fix}")
    expected = listed_sha256(out_dir).get(str(path.relative_to(out_dir)))
    if expected is not None and hashlib.sha256(raw).hexdigest() != expected:
        raise InputError(f"{path}: differs from manifest.json, so it cannot vouch for the artifacts; {fix}")
    try:
        _check_members(io.BytesIO(raw))
        with np.load(io.BytesIO(raw), allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, NotImplementedError) as exc:
        reason = escape(str(exc).splitlines()[0] if str(exc) else "")
        raise InputError(f"{path}: not a readable .npz ({type(exc).__name__}: {reason}); {fix}") from None


def listed_sha256(out_dir: Path) -> dict:
    """manifest.json's ``artifacts`` (relative path -> sha256), empty when it lists none."""
    manifest = read_json(out_dir / "manifest.json")
    listed = manifest.get("artifacts") if isinstance(manifest, dict) else None
    return listed if isinstance(listed, dict) else {}


def _check_members(handle) -> None:
    """Refuse an archive before any array is read when a member's header (its npy header, or the zip's
    declared and compressed sizes) says more than the bound: a few bytes can declare gigabytes."""
    total = 0
    with zipfile.ZipFile(handle) as archive:
        for info in archive.infolist():
            total += info.file_size
            if total > MAX_READ_BYTES or info.file_size > 64 * max(info.compress_size, 1 << 16):
                raise ValueError(f"member {info.filename!r} expands past the {MAX_READ_BYTES}-byte bound")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                    version, np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(member)
            if dtype.hasobject:
                raise ValueError(f"member {info.filename!r} holds Python objects (pickle); only arrays are read")
            if math.prod(shape) * dtype.itemsize > info.file_size:
                raise ValueError(f"member {info.filename!r} declares {shape} {dtype}, more than it holds")


class StoredData:
    """The stored sample as TaskData-like eval batches: ``(*input groups, labels)`` per batch."""

    def __init__(self, out_dir: Path):
        self.path = heldout_path(out_dir)
        arrays = load_npz(self.path, out_dir)
        try:
            self.meta = json.loads(str(arrays.pop("__meta__")))
            if self.meta["format"] != FORMAT:
                raise ValueError(f"format {self.meta['format']!r}, expected {FORMAT}")
            self._batches = self._parse(arrays)
        except (KeyError, ValueError, IndexError, TypeError) as exc:
            raise InputError(
                f"{self.path}: not a modelpress held-out sample ({type(exc).__name__}: {exc}); "
                "re-run 'modelpress run' to write it again"
            ) from None

    def _parse(self, arrays: dict[str, np.ndarray]) -> list[tuple]:
        batches = []
        for index in range(self.meta["batches"]):
            groups = []
            for g, kind in enumerate(self.meta["kinds"]):
                prefix = f"b{index}{SEP}g{g}{SEP}"
                named = {k[len(prefix) :]: torch.from_numpy(a) for k, a in arrays.items() if k.startswith(prefix)}
                if not named:
                    raise KeyError(f"{prefix}*")
                groups.append(arrange_inputs(kind, list(named), list(named.values())))
            labels = arrays.get(f"b{index}{SEP}labels")
            batches.append((*groups, None if labels is None else torch.from_numpy(labels)))
        return batches

    def batches(self, split: str) -> list[tuple]:
        return self._batches

    def evaluator(self, evaluator: Evaluator | None) -> Evaluator:
        """``evaluator`` (built-in or trusted) reading stored batches; a stand-in that only feeds inputs."""
        groups = len(self.meta["kinds"])
        higher = self.meta.get("higher_is_better", True) is not False  # data, never code: a bool or the default
        base = evaluator or Evaluator(
            self.meta["metric"], score=None, is_classifier=self.meta["is_classifier"], higher_is_better=higher
        )
        return dataclasses.replace(base, inputs_of=lambda b: list(b[:groups]))


def inputs_in_order(data: StoredData) -> list[Any]:
    """The stored model inputs, one group of one batch at a time, in the order references are stored."""
    return [inputs for batch in data.batches("eval") for inputs in batch[:-1]]


def store_reference(out_dir: Path, source: str, model: torch.nn.Module, data: StoredData) -> Path:
    """The torch outputs of ``model`` (every tensor output) on the stored inputs, in order."""
    from export.onnx.validate import torch_outputs_predictor

    predict = torch_outputs_predictor(model)
    arrays = {}
    for i, inputs in enumerate(inputs_in_order(data)):
        for k, output in enumerate(predict(inputs)):
            arrays[f"i{i}{SEP}o{k}"] = output.numpy()
    path = reference_path(out_dir, source)
    _save(path, arrays)
    return path


def reference_predictor(out_dir: Path, source: str, data: StoredData):
    """``predict(inputs) -> list[Tensor]`` replaying the stored torch outputs in the order inputs come."""
    path = reference_path(out_dir, source)
    arrays = load_npz(path, out_dir)
    count = len(inputs_in_order(data))
    try:
        replay = [
            [torch.from_numpy(arrays[f"i{i}{SEP}o{k}"]) for k in range(_outputs(arrays, i))] for i in range(count)
        ]
    except KeyError as exc:
        fix = "re-run 'modelpress run' to write it again"
        raise InputError(f"{path}: lacks {exc} for the stored inputs; {fix}") from None
    queue = iter(replay)
    return lambda inputs: next(queue)


def _outputs(arrays: dict, index: int) -> int:
    count = sum(1 for key in arrays if key.startswith(f"i{index}{SEP}o"))
    if not count:
        raise KeyError(f"i{index}{SEP}o0")
    return count


def store_evidence(out_dir: Path, models: dict[str, torch.nn.Module], evaluator, data, metric) -> None:
    """The held-out sample and each torch source's reference outputs, written at export time. Inputs
    numpy cannot hold (non-tensor values) cost the run only its re-measurement, never its results."""
    from compress.core import log

    try:
        store_heldout(out_dir, evaluator, data, metric)
        stored = StoredData(out_dir)
        for source, model in models.items():
            store_reference(out_dir, source, model, stored)
    except (TypeError, ValueError, RuntimeError, InputError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warn(f"re-measurement data not stored ({reason}); 'modelpress report' will refuse this folder")


def reverify(out_dir: Path, records: list[dict], stored: StoredData, recipe) -> None:
    """Parity of every artifact file against the stored torch outputs of its source, under the
    tolerances it was exported with (quantized ones bound the damage); a changed file stays marked
    changed, with parity computed on the file that is there now."""
    from export.onnx.untrusted import ArtifactRefused, checked_session
    from export.onnx.validate import compare_predictions, quantized_parity
    from export.runfolder.integrity import mark

    for record in records:
        path = out_dir / record.get("path", "")
        if record.get("format") != "onnx" or "size_bytes" not in record or not path.is_file():
            continue  # missing, or not readable as ONNX (integrity.py): nothing to run
        try:
            session = checked_session(path)
        except ArtifactRefused as exc:  # the file itself is hostile or broken: this artifact fails, exit 1
            refused = mark(record, "failed", f"refused before measuring: {str(exc).splitlines()[0]}")
            record.clear()
            record.update(refused)
            continue
        source = record.get("source_artifact") or record["name"]
        expected = reference_predictor(out_dir, source, stored)
        tolerance = quantized_parity(recipe) if "scheme" in record else recipe.export.parity
        try:
            parity = compare_predictions(
                expected, session, inputs_in_order(stored), tolerance, stored.meta["is_classifier"]
            )
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            # ONNX Runtime refuses the stored inputs (another shape or type than the file takes): the
            # sample, not modelpress, is at fault.
            reason = escape(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:300]
            raise InputError(
                f"{stored.path}: its inputs do not fit artifact {record['name']} ({reason}); "
                "re-run 'modelpress run' to write it again"
            ) from None
        record["parity"] = {**parity.to_dict(), "reference": str(reference_path(out_dir, source).relative_to(out_dir))}
        verdict = "passed" if parity.passed else "failed: " + "; ".join(parity.failures)
        if record.get("status") == "changed":
            record["error"] = (
                f"file differs from manifest.json; re-verified against the stored reference: parity {verdict}"
            )
        elif parity.passed:
            record["status"] = "passed"
            record.pop("error", None)
        else:
            record.update(status="failed", error=f"parity {verdict}")
