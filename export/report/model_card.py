"""The model card (``README.md``) of every exported folder, in the Hugging Face model-card format:
YAML front matter whose ``model-index`` holds the run's figures, then a short text.

Every figure is read from report.json when the report is written, so ``modelpress report`` (which
re-measures and rewrites report.json) rewrites the cards too, and a card never carries a number
that report.json does not. Each entry names the file it was measured on, the runtime, the split,
and for latency the batch size, the machine and the timing method.
"""

from pathlib import Path
from typing import Any

import yaml

from compress.core.io import write_text_atomic
from compress.core.untrusted import escape, inside, no_link

# Folder kind (the artifact record's ``hf_folder_kind``) -> the Hub's library name and pipeline tag.
KINDS = {
    "sentence-transformers": ("sentence-transformers", "sentence-similarity"),
    "transformers": ("transformers", "feature-extraction"),
}


def _entry(kind: str, name: str, value: float, label: str) -> dict:
    return {"type": kind, "name": label, "value": value, "verified": False}


def _latency_entries(artifact: dict, machine: str) -> list[dict]:
    entries = []
    for row in artifact.get("latency") or []:
        if row.get("stale") or row.get("p50_ms") is None:
            continue  # a figure of another machine or an older file stays in report.json's history only
        where = f"{row.get('runtime')} {row.get('provider')}, {row.get('threads')} threads, {machine}"
        where += ", unreliable: the machine was loaded" if row.get("unreliable") else ""  # as report.json flags it
        label = f"p50 latency ms, batch {row.get('batch_size')} ({artifact['name']}: {where})"
        entries.append(_entry("latency_p50_ms", artifact["name"], row["p50_ms"], label))
    return entries


def card_metrics(report: dict) -> list[dict]:
    """The model-index metrics: the last stage's metric in torch on the eval split, then every passed
    artifact's metric in its runtime, its size in bytes, and its p50 latencies."""
    machine = f"{report['environment'].get('cpu')}, {report['environment'].get('usable_cores')} usable cores"
    stage = report["stages"][-1]
    name = stage["metric"]["name"]
    entries = [_entry(name, "torch", stage["metric"]["value"], f"{name}, eval split (torch, stage {stage['name']})")]
    for artifact in report["artifacts"]:
        if artifact.get("status") != "passed":
            continue
        metric = artifact.get("metric") or {}
        if metric.get("value") is not None:
            label = f"{metric['name']}, eval split ({artifact['name']}: {artifact['path']}, {metric.get('runtime')})"
            entries.append(_entry(metric["name"], artifact["name"], metric["value"], label))
        if artifact.get("size_bytes") is not None:
            label = f"size in bytes ({artifact['name']}: {artifact['path']})"
            entries.append(_entry("size_bytes", artifact["name"], artifact["size_bytes"], label))
        entries += _latency_entries(artifact, machine)
    return entries


def card_text(report: dict, record: dict) -> str:
    """The README.md of the folder ``record`` (an artifact record with ``hf_folder``) points to."""
    library, pipeline = KINDS.get(record.get("hf_folder_kind"), KINDS["transformers"])
    recipe = report["recipe"]
    front = {
        "library_name": library,
        "pipeline_tag": pipeline,
        "tags": ["modelpress", "compressed", *(p["pass"] for p in recipe.get("passes", []))],
        "model-index": [
            {
                "name": recipe["name"],
                "results": [
                    {
                        "task": {"type": pipeline, "name": report["stages"][-1]["metric"]["name"]},
                        "dataset": {"name": "the recipe's eval split", "type": "modelpress-eval", "split": "eval"},
                        "metrics": card_metrics(report),
                    }
                ],
            }
        ],
    }
    cpu = report["environment"].get("cpu")
    notes = "".join(f"- {escape(note)}\n" for note in record.get("hf_folder_notes", []))
    files = "".join(f"- `{escape(name)}`\n" for name in record.get("hf_folder_files", []))
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False, allow_unicode=True)}---\n\n"
        f"# {escape(recipe['name'])}\n\n"
        f"Compressed by modelpress with the passes {', '.join(p['pass'] for p in recipe.get('passes', []))} "
        f"(report of {report.get('created')}). The figures above are report.json's: the metric on the recipe's "
        f"eval split, the size and the latency of each artifact of the run, measured on {cpu} "
        f"({report.get('latency_method', '').split(';')[0]}). This folder holds the `{record['name']}` model in torch "
        f"({record.get('hf_folder_architecture', 'transformers')}).\n\n"
        + (f"Notes:\n\n{notes}\n" if notes else "")
        + (f"ONNX files (the same model, without pooling):\n\n{files}\n" if files else "")
    )


def card_folders(out_dir: Path, report: dict[str, Any]) -> list[tuple[str, Path]]:
    """(artifact name, folder) of every folder an artifact of ``report`` names (``hf_folder``) that exists."""
    found = []
    for record in report["artifacts"]:
        relative = record.get("hf_folder")
        if relative:
            folder = inside(out_dir, relative, f"artifact {record['name']} hf_folder")
            if no_link(folder, "a model folder"):  # removed since: nothing to describe
                found.append((record["name"], folder))
    return found


def write_model_cards(out_dir: Path, report: dict[str, Any]) -> list[Path]:
    """Rewrite the README.md of every folder an artifact of ``report`` names (``hf_folder``)."""
    records = {record["name"]: record for record in report["artifacts"]}
    return [
        write_text_atomic(folder / "README.md", card_text(report, records[name]))
        for name, folder in card_folders(out_dir, report)
    ]
