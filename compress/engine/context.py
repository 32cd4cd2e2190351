"""What a pass can see besides the model: data, teacher, inputs, seed and history."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compress.models.data import TaskData
from compress.models.evaluate import metric_loss


@dataclass
class Context:
    """Shared state of one pipeline run.

    ``teacher`` is the model as it entered the pipeline (the default teacher for
    distillation). ``evaluate(model, split)`` scores a torch model with the task metric.
    ``history`` holds one replayable record per completed pass. ``scratch_dir`` is a
    folder private to the running stage (None without a run folder): a long pass keeps its
    checkpoints there so that a rerun can continue it; it is deleted when the stage completes.
    """

    data: TaskData
    example_inputs: Any
    teacher: torch.nn.Module
    evaluate: Callable[..., float]
    seed: int = 0
    work_dir: Path | None = None
    scratch_dir: Path | None = None
    history: list[dict] = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    higher_is_better: bool = True  # the task metric's direction (perplexity: False)

    def metric_loss(self, reference: float, value: float) -> float:
        """How much worse ``value`` scores than ``reference`` (positive: worse), whatever the metric's direction."""
        return metric_loss(reference, value, self.higher_is_better)

    def record(self, **facts: Any) -> None:
        """Add facts about the running pass (kept indices, per-layer sparsity...) to its record."""
        self.facts.update(facts)
