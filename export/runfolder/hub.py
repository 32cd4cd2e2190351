"""The run's model folder for other tools (``export.hf_folder: true``): ``artifacts/compressed.hf/``,
the compressed transformers model saved by transformers (``export.hub.hf_folder``) and, for a sentence
encoder, laid out for sentence-transformers with its ONNX files (``export.hub.sentence_folder``). Its
README.md, the model card, is written with the report.

The folder is built in a new temporary folder inside ``artifacts/`` and renamed into place: the
libraries that write it follow whatever names they find, and a fresh folder holds none planted there.
A model whose cut no config describes, or no transformers model at all, keeps its ONNX files and
``compress.load``; its record says why in one line.
"""

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from compress.core import log
from compress.core.errors import ModelpressError
from compress.core.io import write_json_atomic
from compress.core.untrusted import no_link
from export.runfolder.artifacts import artifacts_dir

FOLDER = "compressed.hf"


def _int8_spec(recipe) -> Any:
    """The recipe's first int8 dynamic ONNX variant (it shapes the folder's int8 file), or None."""
    specs = [spec for config in recipe.passes for spec in config.onnx_variants()]
    return next((spec for spec in specs if getattr(spec, "scheme", None) == "int8_dynamic"), None)


def _build(staging: Path, model, example_inputs, recipe, tokenizer) -> tuple[Path, dict]:
    from export.hub.hf_folder import transformers_model, write_hf_folder
    from export.hub.sentence_folder import pooling_mode, save_sentence_transformer, write_onnx_files

    made = write_hf_folder(model, staging / "hf", example_inputs, tokenizer)
    facts = {"hf_folder_kind": "transformers", "hf_folder_architecture": made.architecture}
    facts["hf_folder_notes"], facts["hf_folder_parity_max_abs"] = made.notes, made.max_abs
    hf_model, wrapper = transformers_model(model)
    mode = pooling_mode(wrapper)
    if mode is None:
        return made.path, facts
    try:
        save_sentence_transformer(made.path, staging / "st", mode)
    except ImportError:
        facts["hf_folder_notes"].append("no sentence-transformers layout: pip install sentence-transformers")
        return made.path, facts
    facts["hf_folder_kind"] = "sentence-transformers"
    facts["hf_folder_files"] = write_onnx_files(
        hf_model, staging / "st", example_inputs, recipe.export, _int8_spec(recipe)
    )
    return staging / "st", facts


def write_hub_folder(out_dir: Path, records: list[dict], model: torch.nn.Module, example_inputs, recipe, tokenizer):
    """Add ``hf_folder`` and its facts (or ``hf_folder_error``) to the ``compressed`` record."""
    record = next((r for r in records if r.get("name") == "compressed" and r.get("status") == "passed"), None)
    if not recipe.export.hf_folder or record is None:
        return records
    folder = artifacts_dir(out_dir) / FOLDER
    staging = Path(tempfile.mkdtemp(prefix=f".{FOLDER}.", dir=artifacts_dir(out_dir)))
    try:
        built, facts = _build(staging, model, example_inputs, recipe, tokenizer)
        if no_link(folder, "artifacts/compressed.hf"):
            shutil.rmtree(folder)
        built.rename(folder)
    except (ModelpressError, ValueError, OSError) as exc:
        record["hf_folder_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warn(f"  compressed: no Hugging Face folder ({record['hf_folder_error']}); compress.load loads the run")
    else:
        record.update(facts, hf_folder=str(folder.relative_to(out_dir)))
        log.info(f"  compressed: {facts['hf_folder_kind']} folder {folder}")
        for note in facts["hf_folder_notes"]:
            log.info(f"    {note}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_json_atomic(artifacts_dir(out_dir) / "compressed.json", record)
    return records
