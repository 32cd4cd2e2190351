"""The search space, built from the model and narrowed (or widened) by the recipe's ``search`` section.

What the passes can cut decides the axes: channel ratios for convolutional nets; depth
(``layer_drop``'s share of blocks dropped), heads and FFN neurons for transformers (the hidden
size stays unless ``prune_ratios`` asks); neurons for plain MLPs. Magnitude sparsity is no axis:
the ONNX Runtime kernels every trial is timed in are dense, so zeros make a model neither faster
nor smaller there (only its gzip size). Quantization schemes default per kind (int8 static for
convolutions, whose QDQ ONNX Runtime fuses into QLinearConv; int8 dynamic elsewhere). The
recipe's own passes give the settings of each axis (importance, rounding, distillation loss and
length, calibration), so a candidate is the recipe with other ratios, and its trials are plain
``compress.run`` calls.
On the cheap rungs distillation is shortened and quantization keeps no layer float (see ``passes``).
"""

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

from compress.core import log
from compress.core.errors import InputError, RecipeError, first_line
from compress.models.select import _matches
from compress.recipe.schema import Recipe
from compress.recipe.search_spec import SearchSpec

# Kind -> default axes. Ratios listed from no pruning up; 0.875 keeps an eighth of each width.
DEFAULT_AXES = {
    "cnn": {"prune_ratios": [0.0, 0.25, 0.5, 0.625, 0.75, 0.875], "quantize": ["none", "int8_static"]},
    "transformer": {
        "depth_ratios": [0.0, 0.5],
        "prune_ratios": [0.0],
        "head_ratios": [0.0, 0.25, 0.5],
        "ffn_ratios": [0.0, 0.25, 0.5],
        "quantize": ["none", "int8_dynamic"],
    },
    "mlp": {"prune_ratios": [0.0, 0.25, 0.5, 0.75], "quantize": ["none", "int8_dynamic"]},
}
# The first Linear of a transformer block's FFN, by family (BERT, torch.nn, GPT-2, ViT-style MLPs).
FFN_PATTERNS = (r"re:.*intermediate\.dense$", r"re:.*\.linear1$", r"re:.*mlp\.c_fc$", r"re:.*mlp\.fc1$")
SEARCHED_PASSES = ("layer_drop", "structured_prune", "distill", "quantize")
# The section's keys that replace a default axis.
AXES = ("depth_ratios", "prune_ratios", "head_ratios", "ffn_ratios", "quantize")
# What the search sets in layer_drop: how many blocks go (the recipe's strategy and settings stay).
DEPTH_CHOICE = ("keep", "ratio", "layers")
CONVOLUTIONS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def model_kind(model: torch.nn.Module) -> str:
    """``transformer`` when structured_prune finds attention heads to cut, ``cnn`` with convolutions, else ``mlp``."""
    from compress.pruning.attention import attention_modules

    if attention_modules(model):
        return "transformer"
    if any(isinstance(m, CONVOLUTIONS) for m in model.modules()):
        return "cnn"
    return "mlp"


def ffn_pattern(model: torch.nn.Module) -> str | None:
    """The ``re:`` pattern naming the model's FFN input layers, or None when no known family matches."""
    from compress.pruning.conv1d import is_conv1d  # GPT-2's FFN layers are Hugging Face Conv1D

    names = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) or is_conv1d(m)]
    return next((p for p in FFN_PATTERNS if any(_matches(p, name) for name in names)), None)


def leave_ffn_to_the_axis(prune: dict, model: torch.nn.Module, pattern: str) -> dict:
    """``prune`` without the recipe's ``layer_ratios`` entries naming FFN layers: the ffn_ratios axis sets
    their width (kept, a recipe ratio would cut the FFN of every candidate, the ``ffn 0`` ones too)."""
    names = [name for name, _ in model.named_modules() if name]
    ratios = prune.get("layer_ratios") or {}
    owned = []
    for key in ratios:
        hits = [name for name in names if _matches(key, name)]
        others = [name for name in hits if not _matches(pattern, name)]
        if others and len(others) < len(hits):
            raise RecipeError(
                f"structured_prune.layer_ratios {key!r} names FFN layers, whose width the search's ffn_ratios sets, "
                f"and others ({others[0]}); narrow it to the other layers"
            )
        if hits and not others:
            owned.append(key)
    for key in owned:
        log.warn(f"search: structured_prune.layer_ratios {key!r} names FFN layers, which ffn_ratios sets; left out")
    return {**prune, "layer_ratios": {key: ratio for key, ratio in ratios.items() if key not in owned}}


@dataclass(frozen=True)
class Candidate:
    """One point of the pruning axes; its rungs differ in distillation length only."""

    ratio: float = 0.0
    head_ratio: float = 0.0
    ffn_ratio: float = 0.0
    depth_ratio: float = 0.0  # share of the blocks layer_drop removes

    @property
    def cuts_width(self) -> bool:
        return bool(self.ratio or self.head_ratio or self.ffn_ratio)

    @property
    def prunes(self) -> bool:
        return self.cuts_width or bool(self.depth_ratio)

    @property
    def amount(self) -> float:
        """How much is cut, summed over the axes: the search tries the most compressed first."""
        return self.depth_ratio + self.ratio + self.head_ratio + self.ffn_ratio

    def label(self) -> str:
        axes = (("depth", self.depth_ratio), ("prune", self.ratio), ("heads", self.head_ratio), ("ffn", self.ffn_ratio))
        parts = [f"{name} {value:g}" for name, value in axes if value]
        return ", ".join(parts) or "no pruning"


@dataclass
class Space:
    """The candidates, the quantized variants every trial exports, and the recipe's pass settings."""

    kind: str
    candidates: list[Candidate]
    variants: list[dict]  # ONNX quantization variants, each named
    keep_fp32: bool  # the fp32 artifact counts as a point (``none`` among the schemes)
    fractions: list[float]
    base: dict[str, dict] = field(default_factory=dict)  # pass name -> the recipe's settings of it
    ffn_pattern: str | None = None

    def passes(self, candidate: Candidate, rung: int) -> list[dict]:
        """The recipe passes of ``candidate`` on rung ``rung``: drop blocks, prune, distill (scaled), quantize."""
        passes = []
        if candidate.depth_ratio:
            passes.append({**self.base["layer_drop"], "ratio": candidate.depth_ratio})
        if candidate.cuts_width:
            prune = {**self.base["structured_prune"], "ratio": candidate.ratio, "head_ratio": candidate.head_ratio}
            if candidate.ffn_ratio:
                prune["layer_ratios"] = {**prune.get("layer_ratios", {}), self.ffn_pattern: candidate.ffn_ratio}
            passes.append(prune)
        if candidate.prunes:
            passes.append(scaled_distill(self.base["distill"], self.fractions[rung]))
        if self.variants:
            quantize = {**self.base["quantize"], "onnx": self.variants}
            if rung < len(self.fractions) - 1:
                # A cheap rung quantizes every layer: the per-layer float fallback of a budget costs one
                # quantization per layer, and is left to the finalists.
                quantize["max_metric_drop"] = None
            passes.append(quantize)
        return passes

    def describe(self) -> list[str]:
        labels = "; ".join(c.label() for c in self.candidates)  # a label holds commas itself
        schemes = ["none"] * self.keep_fp32 + [v["name"] for v in self.variants]
        return [
            f"model kind: {self.kind}",
            f"pruning candidates ({len(self.candidates)}): {labels}",
            f"quantization: {', '.join(schemes)}",
            f"rungs (share of the recipe's distillation): {', '.join(f'{f:g}' for f in self.fractions)}",
        ]


def scaled_distill(distill: dict, fraction: float) -> dict:
    """The recipe's distillation shortened to ``fraction`` of its epochs (and of max_steps, when set)."""
    scaled = {**distill, "epochs": max(1, round(distill.get("epochs", 5) * fraction))}
    if distill.get("max_steps"):
        scaled["max_steps"] = max(1, round(distill["max_steps"] * fraction))
    return scaled


def _recipe_settings(recipe: Recipe, budget: float) -> dict[str, dict]:
    """Each searched pass as the recipe sets it (first occurrence), or its defaults."""
    found = {name: None for name in SEARCHED_PASSES}
    for config in recipe.passes:
        if config.pass_name in found and found[config.pass_name] is None:
            found[config.pass_name] = config.to_dict()
        elif config.pass_name not in found:
            log.warn(f"search: the recipe's {config.pass_name} pass is not searched over and is left out")
    defaults = {
        "layer_drop": {"pass": "layer_drop"},
        "structured_prune": {"pass": "structured_prune"},
        "distill": {"pass": "distill"},
        # The quantized variants keep the most sensitive layers float until they fit the search's budget.
        "quantize": {"pass": "quantize", "max_metric_drop": budget, "budget_split": "validation"},
    }
    settings = {name: dict(found[name] or defaults[name]) for name in SEARCHED_PASSES}
    settings["quantize"].pop("onnx", None)
    # Each setting below is changed only when the recipe sets it, so that the trials' keys stay put.
    if settings["quantize"].get("budget_split", "validation") != "validation":
        # the float fallback chooses layers, and the choice must not see the eval split the report scores
        log.warn("search: quantize.budget_split set to validation: a search chooses on the validation split only")
        settings["quantize"]["budget_split"] = "validation"
    if settings["structured_prune"].get("macs_reduction") is not None:
        log.warn("search: structured_prune.macs_reduction left out: the search's ratios set how much is cut")
        settings["structured_prune"]["macs_reduction"] = None
    settings["layer_drop"] = _searched_layer_drop(settings["layer_drop"])
    return settings


def _searched_layer_drop(layer_drop: dict) -> dict:
    """The recipe's layer_drop without its count of blocks, which the depth axis sets as a ratio."""
    settings = {key: value for key, value in layer_drop.items() if key not in DEPTH_CHOICE}
    if layer_drop.get("layers") is not None:
        log.warn("search: layer_drop.layers replaced: the depth axis drops a share of the blocks, uniformly spaced")
    if settings.get("strategy") in (None, "every_other"):
        if settings.get("strategy"):
            log.warn("search: layer_drop strategy every_other drops half the blocks only; the depth axis uses uniform")
        settings.pop("strategy", None)  # layer_drop's default: uniform
    return settings


def _variants(recipe: Recipe, schemes: list[str]) -> list[dict]:
    """One named ONNX variant per scheme: the recipe's own variants of that scheme first, else a default one."""
    recipe_variants = [v.model_dump(mode="json") for c in recipe.passes for v in c.onnx_variants()]
    variants = []
    for scheme in schemes:
        if scheme == "none":
            continue
        own = [dict(v) for v in recipe_variants if v["scheme"] == scheme]
        # 4-bit tables (Gather) need opset 21, as a torch-side twin gets it (see ``ONNX_TWIN``).
        default = {"scheme": scheme, **({"opset": 21} if scheme == "int4" else {})}
        for variant in own or [default]:
            variant["name"] = variant.get("name") or scheme
            variant.pop("max_metric_drop", None)  # the quantize pass's budget applies
            variant.pop("budget_split", None)
            variants.append(variant)
    return variants


def _depth_ratios(model: torch.nn.Module, layer_drop: dict, ratios: list[float]) -> list[float]:
    """The ratios that drop a valid and distinct number of the model's blocks (0: none dropped)."""
    from compress.passes.layer_drop import find_blocks, kept_for_ratio

    if not any(ratios):
        return [0.0]
    try:
        path, blocks = find_blocks(model, layer_drop.get("blocks"))
    except InputError as exc:
        log.warn(f"search: depth_ratios left out: {first_line(exc)}")
        return [0.0]
    kept: dict[float, int] = {}
    for ratio in ratios:
        count = kept_for_ratio(ratio, len(blocks)) if ratio else len(blocks)
        if ratio and not 1 <= count < len(blocks):
            log.warn(f"search: depth ratio {ratio:g} keeps {count} of {path}'s {len(blocks)} blocks; left out")
        elif count in kept.values():
            log.warn(f"search: depth ratio {ratio:g} keeps {count} blocks of {path}, as another ratio does; left out")
        else:
            kept[ratio] = count
    return list(kept) or [0.0]


def build_space(model: torch.nn.Module, recipe: Recipe, spec: SearchSpec, metric_budget: float) -> Space:
    """The space for ``model``: the kind's default axes, replaced by those the ``search`` section gives."""
    kind = model_kind(model)
    axes = {**DEFAULT_AXES[kind], **{k: v for k, v in spec.model_dump().items() if k in AXES and v is not None}}
    pattern = ffn_pattern(model) if kind == "transformer" else None
    ffn = axes.get("ffn_ratios", [0.0])
    if pattern is None and any(ffn):
        log.warn("search: no FFN layers of a known family found; the FFN axis is left out")
        ffn = [0.0]
    heads = axes.get("head_ratios", [0.0]) if kind == "transformer" else [0.0]
    if kind != "transformer" and spec.head_ratios:
        log.warn(f"search: head_ratios ignored: a {kind} has no attention heads to cut")
    base = _recipe_settings(recipe, metric_budget)
    depths = _depth_ratios(model, base["layer_drop"], axes.get("depth_ratios", [0.0]))
    grid = itertools.product(depths, axes["prune_ratios"], heads, ffn)
    candidates = [Candidate(r, h, f, d) for d, r, h, f in grid]
    schemes = axes["quantize"]
    if spec.quantize is None:
        # The recipe's own quantization, when it has some, is what the user asked for.
        own = sorted({v.scheme for c in recipe.passes for v in c.onnx_variants()})
        schemes = ["none", *own] if own else schemes
    if pattern is not None:
        base["structured_prune"] = leave_ffn_to_the_axis(base["structured_prune"], model, pattern)
    return Space(
        kind=kind,
        candidates=candidates,
        variants=_variants(recipe, schemes),
        keep_fp32="none" in schemes,
        fractions=list(spec.distill_fractions),
        base=base,
        ffn_pattern=pattern,
    )


def trial_recipe(recipe: Recipe, passes: list[dict[str, Any]], name: str | None = None) -> dict:
    """``recipe`` with these passes and no ``search`` section, as a recipe document."""
    body = recipe.to_dict()
    body.pop("search", None)
    return {**body, "name": name or recipe.name, "passes": passes}
