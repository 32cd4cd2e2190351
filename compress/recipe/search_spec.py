"""The recipe's ``search:`` section: what ``modelpress search`` may try, and how hard it looks.

Every key is optional; the command line's flags override the section's values. An axis left
out is built from the model (``compress.search.space``); an axis given narrows or widens it.

Example::

    search:
      objective: latency
      batch_size: 32
      max_drop: 0.5                    # points: 0.5 = half a point of accuracy
      budget_minutes: 10
      prune_ratios: [0.5, 0.625, 0.75]
      quantize: [none, int8_static]
      distill_fractions: [0.2, 1.0]    # the rungs: a fifth of the recipe's distillation, then all of it
"""

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from compress.core.config import StrictModel
from compress.core.errors import RecipeError
from compress.recipe.validation import describe_errors

Ratio = Annotated[float, Field(ge=0.0, lt=1.0)]
Scheme = Literal["none", "int8_static", "int8_dynamic", "int4"]
Objective = Literal["latency", "size"]


class SearchSpec(StrictModel):
    """Args:
    objective: ``latency`` (p50 in ONNX Runtime at ``batch_size``) or ``size`` (ONNX file on disk).
    batch_size: the batch size latency is measured at.
    max_drop: the accuracy budget in points below the fp32 model on the validation split (a point is
        0.01 of accuracy, 1.0 of a Spearman x100; a custom metric counts in its own units).
    budget_minutes: no trial starts once this much time has passed; the best point found is kept.
    depth_ratios: share of the blocks layer_drop removes, rounded halves up (0.5: 6 -> 3); 0 = all
        kept. Transformers by default; any model with one list of repeated blocks. A ratio that
        keeps no block, all of them, or as many as another ratio is left out with a warning.
    prune_ratios: channel (CNN) or hidden-size (transformer) ratios of structured_prune; 0 = no pruning.
    head_ratios / ffn_ratios: transformers: share of attention heads / FFN neurons removed (the FFN
        axis replaces the recipe's ``layer_ratios`` entries that name FFN layers).
    quantize: ONNX quantization schemes to try (``none`` = the fp32 artifact).
    distill_fractions: the rungs of successive halving, each a share of the recipe's distillation
        length (epochs and max_steps), ascending; the last rung's points are the finalists.
    validation_batches: validation batches that score the rungs before the last (the last scores all).
    promote: share of candidates a rung passes on to the next one (the last rung: at most this
        share, taken one at a time while the recovery measured so far brings one within budget).
    promote_slack: points of drop beyond ``max_drop`` a candidate may show on a cheap rung and
        still count as within budget (shorter distillation recovers less); the last rung replaces
        this guess with what its finalists won back.
    """

    objective: Objective = "latency"
    batch_size: int = Field(32, ge=1, le=4096)
    max_drop: float = Field(1.0, ge=0.0, le=100.0)
    budget_minutes: float = Field(60.0, gt=0.0, le=7 * 24 * 60)
    depth_ratios: list[Ratio] | None = Field(None, min_length=1, max_length=32)
    prune_ratios: list[Ratio] | None = Field(None, min_length=1, max_length=32)
    head_ratios: list[Ratio] | None = Field(None, min_length=1, max_length=32)
    ffn_ratios: list[Ratio] | None = Field(None, min_length=1, max_length=32)
    quantize: list[Scheme] | None = Field(None, min_length=1, max_length=4)
    distill_fractions: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        default_factory=lambda: [0.2, 1.0], min_length=1, max_length=6
    )
    validation_batches: int = Field(8, ge=1, le=1_000_000)
    promote: float = Field(0.5, gt=0.0, le=1.0)
    promote_slack: float = Field(2.0, ge=0.0, le=100.0)

    @field_validator("depth_ratios", "prune_ratios", "head_ratios", "ffn_ratios", "quantize")
    @classmethod
    def _unique(cls, values: list | None) -> list | None:
        if values is not None and len(set(values)) != len(values):
            raise ValueError(f"lists a value twice ({values}); give each once")
        return values

    @model_validator(mode="after")
    def _ascending(self):
        fractions = self.distill_fractions
        if any(b <= a for a, b in zip(fractions, fractions[1:])):
            raise ValueError(f"distill_fractions must be strictly ascending (cheap rungs first); got {fractions}")
        return self


def parse_search_spec(section: Any, overrides: dict[str, Any] | None = None) -> SearchSpec:
    """The recipe's ``search`` section (or None) with the command line's values laid over it."""
    if isinstance(section, SearchSpec):
        section = section.model_dump()
    if section is not None and not isinstance(section, dict):
        raise RecipeError(f"search: expected a mapping of settings; got {type(section).__name__}")
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    try:
        return SearchSpec.model_validate({**(section or {}), **given})
    except ValidationError as exc:
        raise RecipeError(describe_errors(exc, SearchSpec, "search")) from None
