"""One folder per completed stage: ``stage.json`` (metrics, config, record) and weights.

``stage.json`` is written last, so its presence marks the stage complete. Its
``fingerprint`` chains the input model's weights, the seed and every pass config up
to this stage, so a stage is reused only by a run that would recompute it identically.
"""

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from compress.core.errors import InputError, OutputError
from compress.core.io import link_duplicate, read_json, write_atomic, write_json_atomic
from compress.core.untrusted import check_name, escape, no_link, regular

WEIGHTS = "model.safetensors"


@dataclass
class StageResult:
    """The metrics of the model after one stage (``baseline`` is the model as it entered)."""

    index: int
    name: str
    pass_name: str | None
    config: dict | None
    metric_name: str
    metric: float
    params: int
    nonzero_params: int
    seconds: float
    fingerprint: str
    record: dict = field(default_factory=dict)
    macs: int | None = None
    dense_bytes: int | None = None
    layers: list = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # printed while the stage ran; repeated on resume
    resumed: bool = False

    @property
    def folder_name(self) -> str:
        return f"{self.index:02d}-{self.name}"

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body.pop("resumed")
        return body


def chain_fingerprint(previous: str, payload: Any) -> str:
    return hashlib.sha256((previous + json.dumps(payload, sort_keys=True)).encode()).hexdigest()


def stages_dir(out_dir: Path) -> Path:
    return out_dir / "stages"


def stage_folders(out_dir: Path, error=InputError) -> list[Path]:
    """The stage folders, in order; a link or a file among them is refused (one line), never followed
    nor removed: a run folder from elsewhere may point one at a user's folder."""
    root = stages_dir(out_dir)
    if not no_link(root, "stages/ of a run folder", error):
        return []
    folders = sorted(root.iterdir())
    for path in folders:
        check_name(path.name, "stage folder", root)
        no_link(path, "stage folder", error)
    return folders


def save_stage(out_dir: Path, stage: StageResult, model: torch.nn.Module | None) -> Path:
    """Write the stage's weights (if any), then its stage.json; drop later, now stale, stages."""
    from safetensors.torch import save_model

    folder = stages_dir(out_dir) / stage.folder_name
    for stale in stage_folders(out_dir, OutputError):
        if stale.name[:2].isdigit() and int(stale.name[:2]) >= stage.index:
            shutil.rmtree(stale)
    if model is not None:
        write_atomic(folder / WEIGHTS, lambda tmp: save_model(model, str(tmp)))
        # A pass that changed no weight (ONNX-side quantization, say) keeps no second copy: a hard link.
        earlier = [p for p in stages_dir(out_dir).glob(f"*/{WEIGHTS}") if p.parent.name < stage.folder_name]
        link_duplicate(folder / WEIGHTS, sorted(earlier))
    write_json_atomic(folder / "stage.json", stage.to_dict())
    return folder


def find_stage(out_dir: Path, index: int, fingerprint: str) -> StageResult | None:
    """The completed stage ``index`` with this fingerprint, or None."""
    for folder in stage_folders(out_dir):
        if not folder.name.startswith(f"{index:02d}-"):
            continue
        body = read_json(folder / "stage.json")
        if isinstance(body, dict) and body.get("fingerprint") == fingerprint:
            return _stage(body, folder)
    return None


def load_stage_weights(out_dir: Path, stage: StageResult, model: torch.nn.Module) -> None:
    from safetensors.torch import load_model

    path = stages_dir(out_dir) / stage.folder_name / WEIGHTS
    if regular(path, "stage weights") is None:
        raise InputError(f"{escape(path)}: missing; rerun the same command to compute the stage again")
    load_model(model, str(path), strict=True)


def _stage(body: dict, folder: Path) -> StageResult:
    """A stage record read back, refused (one line) when it is not one modelpress wrote."""
    try:
        stage = StageResult(**body, resumed=True)
    except TypeError as exc:
        reason = escape(exc)
        raise InputError(f"{escape(folder)}/stage.json: not a stage record ({reason}); rerun to compute it") from None
    check_name(stage.name, "stage name", folder / "stage.json")
    if not isinstance(stage.index, int) or folder.name != stage.folder_name:
        raise InputError(f"{escape(folder)}/stage.json: its index and name do not match its folder; rerun the run")
    return stage


def read_stages(out_dir: Path) -> list[StageResult]:
    """All completed stages of a run folder, in order."""
    stages = []
    for folder in stage_folders(out_dir):
        body = read_json(folder / "stage.json")
        if body:
            stages.append(_stage(body, folder))
    return stages
