"""The onnxruntime-genai folder of every artifact that generates: each passed decoder with its KV
cache (float or quantized) gets ``artifacts/<name>.genai/`` (the artifact hard-linked as
``model.onnx``, ``genai_config.json`` and the tokenizer the text was made with), so
``og.Model(folder)`` runs it as is. A family onnxruntime-genai has no type for keeps its ONNX file
and says so in the record. ``measure_generation`` then times every folder generating (time to first
token, decode tokens/s, peak memory), the rows taking turns, against the float baseline's folder."""

from pathlib import Path
from typing import Any

import torch

from compress.core import log
from compress.core.errors import ModelpressError
from compress.core.io import write_json_atomic
from export.runfolder.artifacts import artifacts_dir


def write_generation_folders(
    out_dir: Path, records: list[dict], models: dict[str, torch.nn.Module], tokenizer: Any = None
) -> list[dict]:
    """Add ``genai_folder`` (or ``genai_folder_error``) to each passed decoder record; ``models``: the
    torch model each artifact came from by name, ``compressed`` standing for the quantized ones."""
    from export.decoder.genai_folder import genai_folder_for

    for record in records:
        if record.get("status") != "passed" or not record.get("kv_cache"):
            continue
        model = models.get(record["name"], models["compressed"])
        folder = artifacts_dir(out_dir) / f"{record['name']}.genai"
        try:
            genai_folder_for(out_dir / record["path"], folder, model, tokenizer)
        except ModelpressError as exc:
            record["genai_folder_error"] = str(exc).splitlines()[0]
            log.warn(f"  {record['name']}: no onnxruntime-genai folder ({record['genai_folder_error']})", collect=False)
        else:
            record["genai_folder"] = str(folder.relative_to(out_dir))
            log.info(f"  {record['name']}: onnxruntime-genai folder {folder}")
        write_json_atomic(artifacts_dir(out_dir) / f"{record['name']}.json", record)
    return records


def measure_generation(out_dir: Path, recipe: Any, artifacts: list[dict]) -> list[dict]:
    """Add ``generation`` (per batch size: TTFT, decode tokens/s, their spreads and ratios to the float
    baseline's folder, peak RSS) to each artifact with a generation folder; the others are unchanged."""
    import json

    from compress.recipe.schema import usable_cores
    from export.measure.generation import GenerationRow, benchmark_generation

    spec = recipe.report.generation
    folders = [a for a in artifacts if a.get("status") == "passed" and a.get("genai_folder")]
    if not spec.enabled or not folders:
        return artifacts
    # the float artifact first: the baseline of every ratio
    folders.sort(key=lambda a: (a.get("precision") != "fp32", a["name"] != "baseline"))
    rows = [GenerationRow(a["name"], "genai", out_dir / a["genai_folder"]) for a in folders]
    config = json.loads((rows[0].path / "genai_config.json").read_text())
    names = ", ".join(r.name for r in rows)
    log.info(f"generation: {names} (prompt {spec.prompt_tokens} tokens, {spec.new_tokens} new)")
    report = benchmark_generation(
        rows, int(config["model"]["vocab_size"]), tuple(recipe.report.batch_sizes), spec.prompt_tokens,
        spec.new_tokens, spec.rounds, recipe.report.threads or usable_cores(), baseline=rows[0].name,
    )  # fmt: skip
    for record in folders:
        record["generation"] = [
            {k: v for k, v in vars(f).items() if k not in ("row", "decode_step_ms")} | {"baseline": report.baseline}
            for f in report.figures
            if f.row == record["name"]
        ]
    return artifacts
