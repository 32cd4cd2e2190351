"""Edge readiness of an artifact: ORT format for ORT Mobile, and which execution providers run its nodes.

``to_ort_format`` uses ONNX Runtime's own converter (``onnxruntime.tools.convert_onnx_models_to_ort``),
which also writes the ``required_operators.config`` a reduced-operator ORT Mobile build is made from.
``provider_support`` asks ONNX Runtime itself where each node runs: a one-batch profiled run
names the execution provider of every node of the optimized graph, so a node a provider
cannot take shows up as a fallback to the CPU provider instead of being guessed from op lists.
"""

import contextlib
import io
import logging
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from export.errors import ExportError
from export.onnx.scratch import own_cwd

CPU = "CPUExecutionProvider"


def to_ort_format(path: Path, optimization: str = "fixed") -> dict:
    """Write ``<name>.ort`` and ``<name>.required_operators.config`` beside ``path``; return their facts."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    style = {"fixed": OptimizationStyle.Fixed, "runtime": OptimizationStyle.Runtime}[optimization]
    source = path.resolve()  # before own_cwd: a relative run folder (``--out runs/demo``) resolves against ours
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".ort-") as work:
        work = Path(work).resolve()  # absolute: the converter runs with another cwd
        try:
            # The converter prints progress on stdout and logs temporary paths; our log says what matters.
            logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
            with contextlib.redirect_stdout(io.StringIO()):
                with own_cwd():  # the converter writes temporary files into the cwd
                    convert_onnx_models_to_ort(source, output_dir=work, optimization_styles=[style])
        except Exception as exc:  # noqa: BLE001  (the converter raises many types; all mean the same)
            raise ExportError(f"{path.name}: conversion to ORT format failed: {type(exc).__name__}: {exc}") from None
        produced = {p.suffix: p for p in work.iterdir() if p.suffix in (".ort", ".config")}
        if set(produced) != {".ort", ".config"}:
            raise ExportError(f"{path.name}: the ORT converter wrote no model; see its log above")
        config = produced[".config"]
        config.write_text(config.read_text().replace(f"{work}/", ""))  # no temporary paths in a shipped file
        # The config (written last) is moved last, so a present config means a complete pair.
        targets = {suffix: path.parent / produced[suffix].name for suffix in (".ort", ".config")}
        for suffix in (".ort", ".config"):
            shutil.move(produced[suffix], targets[suffix])
    operators = [
        line for line in targets[".config"].read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    return {
        "path": targets[".ort"].name,
        "size_bytes": targets[".ort"].stat().st_size,
        "optimization": optimization,
        "required_operators_config": targets[".config"].name,
        "required_operators": operators,
    }


def _node_providers(path: Path, provider: str, inputs: dict) -> Counter:
    """(op type, provider) counts of the nodes ONNX Runtime ran, from a profiled run."""
    from export.measure.profile import profiled_events

    events = profiled_events(path, inputs, [provider] if provider == CPU else [provider, CPU])
    counts: Counter = Counter()
    seen = set()
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and "provider" in args and event["name"] not in seen:
            seen.add(event["name"])
            counts[(args.get("op_name", "?"), args["provider"])] += 1
    return counts


def provider_support(path: Path, providers: list[str], inputs: dict) -> list[dict]:
    """Per provider: whether every node of the artifact runs on it, and the op types that fall back."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    results = []
    for provider in providers:
        if provider not in available:
            results.append(
                {"provider": provider, "checked": False, "reason": "not available in this onnxruntime install"}
            )
            continue
        counts = _node_providers(path, provider, inputs)
        fallback = Counter()
        for (op, ran_on), count in counts.items():
            if ran_on != provider:
                fallback[op] += count
        results.append(
            {
                "provider": provider,
                "checked": True,
                "supported": not fallback,
                "nodes": sum(counts.values()),
                "fallback_ops": dict(sorted(fallback.items())),
            }
        )
    return results


def merge_support(old: list[dict], new: list[dict]) -> list[dict]:
    """A provider checked on an earlier machine keeps its result where this machine cannot check it."""
    merged = {entry["provider"]: entry for entry in old}
    for entry in new:
        if entry["checked"] or entry["provider"] not in merged:
            merged[entry["provider"]] = entry
    return list(merged.values())
