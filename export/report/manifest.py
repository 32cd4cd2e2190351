"""The run manifest (``manifest.json``): what went in and what came out, by sha256.

Inputs: the checkpoint file (or, for a factory-built model, its weights), the recipe (the
normalized recipe and the ``recipe.yaml`` written into the run folder), the seeds of every stage,
the calibration samples. Outputs: every artifact file. Plus the library versions and opsets.
Two runs with equal manifests inputs produced the files listed, byte for byte.
"""

import datetime
import hashlib
from pathlib import Path

from compress.core.io import write_json_atomic
from compress.core.untrusted import open_read
from compress.engine.stages import StageResult
from compress.recipe.schema import Recipe

SCHEMA = "modelpress.manifest/1"


def sha256_file(path: Path, follow: bool = False) -> str:
    """The file's sha256; a link or a FIFO is refused unless ``follow`` (the user's own checkpoint)."""
    digest = hashlib.sha256()
    with path.open("rb") if follow else open_read(path, "file to fingerprint") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checkpoint(recipe: Recipe, weights_sha256: str) -> dict:
    model = recipe.model
    entry = {"weights_sha256": weights_sha256, "factory": model.factory if model else None}
    if model and model.checkpoint:
        path = Path(model.checkpoint)
        entry["path"] = str(path)
        entry["sha256"] = (
            sha256_file(path, follow=True) if path.is_file() else None
        )  # a Hugging Face folder: weights_sha256
    return entry


def build_manifest(
    out_dir: Path, recipe: Recipe, stages: list[StageResult], artifacts: list[dict], weights_sha256: str, versions
) -> dict:
    files = sorted(p for p in (out_dir / "artifacts").iterdir() if p.is_file() and not p.name.startswith("."))
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": _checkpoint(recipe, weights_sha256),
        "recipe": {"name": recipe.name, "sha256": recipe.sha256(), "file_sha256": sha256_file(out_dir / "recipe.yaml")},
        "seeds": {"recipe": recipe.seed, "stages": {s.name: recipe.seed + s.index for s in stages if s.index}},
        "calibration": {a["name"]: a["calibration_samples"] for a in artifacts if a.get("calibration_samples")},
        "opsets": {a["name"]: a.get("opset") for a in artifacts},
        "versions": versions,
        "artifacts": {str(p.relative_to(out_dir)): sha256_file(p) for p in files if p.suffix != ".json"},
    }


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    return write_json_atomic(out_dir / "manifest.json", manifest)
