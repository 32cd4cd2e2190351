"""Feature distillation: pull named hidden layers of the student towards the teacher's.

Each ``FeatureMatch`` names a student layer and a teacher layer (the same name by default).
Their outputs are captured with forward hooks. Where pruning made the student narrower, a
learned linear projection maps its features to the teacher's width (FitNets, Romero et
al. 2015); it trains with the student and is discarded after. Channels are dim 1 for
conv feature maps (4-D) and the last dim otherwise.
"""

import contextlib
from collections.abc import Iterator
from enum import Enum

import torch
import torch.nn.functional as F
from pydantic import Field

from compress.core.config import StrictModel
from compress.core.errors import SelectionError
from compress.models.data import call_model, first_tensor


class FeatureLossKind(str, Enum):
    mse = "mse"
    cosine = "cosine"


class FeatureMatch(StrictModel):
    """One pair of layers whose outputs are matched.

    Args:
    student: name of the student's layer (``model.named_modules()``) whose output is matched.
    teacher: name of the teacher's layer it is matched to (default: the same name).
    loss: ``mse`` or ``cosine`` between the two outputs, through a learned projection where widths differ.
    weight: weight of this term in the total loss.
    """

    student: str
    teacher: str | None = None
    loss: FeatureLossKind = FeatureLossKind.mse
    weight: float = Field(1.0, gt=0.0, le=1000.0)


def _channels_last(features: torch.Tensor) -> torch.Tensor:
    return features.movedim(1, -1) if features.dim() == 4 else features


@contextlib.contextmanager
def taps(model: torch.nn.Module, names: list[str], owner: str) -> Iterator[dict[str, torch.Tensor]]:
    """While open, ``outputs[name]`` holds the latest output of each named module."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name in dict.fromkeys(names):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            sample = ", ".join(n for n, _ in list(model.named_modules())[1:7])
            raise SelectionError(
                f"distill.features: the {owner} has no module {name!r}; names look like: {sample}"
            ) from None
        hooks.append(
            module.register_forward_hook(lambda _m, _i, out, key=name: outputs.__setitem__(key, first_tensor(out)))
        )
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()


class FeatureLoss(torch.nn.Module):
    """Weighted sum of the feature losses, with projections sized from one probe forward."""

    def __init__(self, matches: list[FeatureMatch], student, teacher, probe_inputs):
        super().__init__()
        self.matches = matches
        self.student_names = [m.student for m in matches]
        self.teacher_names = [m.teacher or m.student for m in matches]
        with (
            torch.no_grad(),
            taps(student, self.student_names, "student") as s,
            taps(teacher, self.teacher_names, "teacher") as t,
        ):
            call_model(student, probe_inputs)
            call_model(teacher, probe_inputs)
        self.projections = torch.nn.ModuleDict()
        for index, (s_name, t_name) in enumerate(zip(self.student_names, self.teacher_names)):
            s_width, t_width = _channels_last(s[s_name]).shape[-1], _channels_last(t[t_name]).shape[-1]
            if s_width != t_width:
                self.projections[str(index)] = torch.nn.Linear(s_width, t_width, bias=False)

    def forward(self, student_features: dict, teacher_features: dict) -> torch.Tensor:
        total = 0.0
        for index, match in enumerate(self.matches):
            s = _channels_last(student_features[self.student_names[index]]).float()
            t = _channels_last(teacher_features[self.teacher_names[index]]).float()
            if str(index) in self.projections:
                s = self.projections[str(index)](s)
            if match.loss == FeatureLossKind.mse.value:
                loss = F.mse_loss(s, t)
            else:
                loss = (1 - F.cosine_similarity(s.flatten(0, -2), t.flatten(0, -2), dim=-1)).mean()
            total = total + match.weight * loss
        return total
