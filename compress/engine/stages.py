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

from compress.core.io import link_duplicate, read_json, write_atomic, write_json_atomic

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


def save_stage(out_dir: Path, stage: StageResult, model: torch.nn.Module | None) -> Path:
    """Write the stage's weights (if any), then its stage.json; drop later, now stale, stages."""
    from safetensors.torch import save_model

    folder = stages_dir(out_dir) / stage.folder_name
    for stale in stages_dir(out_dir).glob("*"):
        if stale.is_dir() and stale.name[:2].isdigit() and int(stale.name[:2]) >= stage.index:
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
    for folder in sorted(stages_dir(out_dir).glob(f"{index:02d}-*")):
        body = read_json(folder / "stage.json")
        if body and body.get("fingerprint") == fingerprint:
            return StageResult(**body, resumed=True)
    return None


def load_stage_weights(out_dir: Path, stage: StageResult, model: torch.nn.Module) -> None:
    from safetensors.torch import load_model

    load_model(model, str(stages_dir(out_dir) / stage.folder_name / WEIGHTS), strict=True)


def read_stages(out_dir: Path) -> list[StageResult]:
    """All completed stages of a run folder, in order."""
    stages = []
    for folder in sorted(stages_dir(out_dir).glob("*")):
        body = read_json(folder / "stage.json")
        if body:
            stages.append(StageResult(**body, resumed=True))
    return stages
