"""A run folder checked against its own manifest before anything in it is re-measured or shown.

``modelpress report DIR`` reads records that someone else may have edited, moved or copied: every
name and path in them must stay inside DIR, and every artifact must still be the file that
manifest.json lists. A missing file is reported missing; a replaced one is reported changed, with
its facts read again from the file and its old figures (parity, metric, latency, size) dropped, so
that no figure in the report belongs to a file that is no longer there.
"""

from pathlib import Path

from compress.core.errors import InputError
from compress.core.io import read_json, write_json_atomic
from compress.core.untrusted import check_name, inside, regular
from export.report.manifest import sha256_file
from export.runfolder.artifacts import artifacts_dir, file_facts, graph_facts
from export.runfolder.evidence import listed_sha256

# Figures measured on the file a record was written for: stale once that file is gone or replaced.
MEASURED = ("parity", "metric", "latency", "provider_support", "ort_format", "warnings", "size_bytes")
MEASURED += ("size_gzip_bytes", "sha256", "external_data", "op_counts", "initializer_dtypes", "opset")
MEASURED += ("generation_parity", "language")


def _checked_records(out_dir: Path) -> list[tuple[Path, dict]]:
    """Every artifact record, after its name and path are checked (all before anything is written)."""
    records = []
    for json_path in sorted(artifacts_dir(out_dir).glob("*.json")):
        record = read_json(json_path)
        if not record:
            continue
        if not isinstance(record, dict):
            raise InputError(f"{json_path}: not an artifact record; refusing the run folder (rerun to write it)")
        # A name is printed, logged and made into paths: a plain name, never control characters.
        name = check_name(record.get("name"), "artifact name", json_path)
        if "path" in record:
            inside(out_dir, record["path"], f"artifact {name} path")
        records.append((json_path, record))
    return records


def mark(record: dict, status: str, error: str) -> dict:
    for key in MEASURED:
        record.pop(key, None)
    return {**record, "status": status, "error": error}


def _changed(record: dict, path: Path) -> dict:
    """A replaced file: its facts read again, or, when it is no ONNX model at all, marked unreadable
    without facts, so that nothing later tries to load or time it."""
    try:
        facts = graph_facts(path)
    except Exception as exc:  # noqa: BLE001  (protobuf and onnx raise many types for a corrupt file)
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        note = f"file differs from manifest.json and is not a readable ONNX model ({reason}); restore it or rerun"
        return mark(record, "changed", note)
    note = "file differs from manifest.json; parity not re-verified, old figures dropped"
    return {**mark(record, "changed", note), **facts, **file_facts(path)}


def verify_run_folder(out_dir: Path) -> list[dict]:
    """Check every artifact against manifest.json; rewrite the records of missing or changed files."""
    listed = listed_sha256(out_dir)
    for relative in listed:
        inside(out_dir, relative, "manifest entry")
    verified = []
    for json_path, record in _checked_records(out_dir):
        if "path" not in record:  # never written (a failed export): nothing to check
            verified.append(record)
            continue
        path = out_dir / record["path"]
        expected = listed.get(record["path"], record.get("sha256"))
        if regular(path, f"artifact {record['name']}") is None:
            record = mark(record, "missing", f"artifact file missing: {record['path']}")
        elif expected is not None and sha256_file(path) != expected:
            record = _changed(record, path)
        else:
            verified.append(record)
            continue
        write_json_atomic(json_path, record)
        verified.append(record)
    return verified
