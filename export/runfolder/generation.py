"""The onnxruntime-genai folder of every artifact that generates: each passed decoder with its KV
cache (float or quantized) gets ``artifacts/<name>.genai/`` (the artifact hard-linked as
``model.onnx``, ``genai_config.json`` and the tokenizer the text was made with), so
``og.Model(folder)`` runs it as is. A family onnxruntime-genai has no type for keeps its ONNX file
and says so in the record."""

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
