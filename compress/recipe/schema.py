"""The recipe: what to load, which passes to run in order, how to export and report.

A recipe is a YAML file, a dict, or typed objects. It is validated as a whole before
anything runs, and every problem is reported at once (see ``compress.recipe.validation``).

Example (YAML)::

    name: demo
    model: {factory: compress.demo.digits:pretrained_model}
    data: {factory: compress.demo.digits:load_data}
    task: {metric: accuracy}
    passes:
      - {pass: magnitude_prune, sparsity: 0.5, scope: global}
    export: {opset: 18}
    report: {batch_sizes: [1, 32]}
"""

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, SerializeAsAny, ValidationError, field_validator

from compress.core import log
from compress.core.config import PassConfig, StrictModel
from compress.core.errors import RecipeError
from compress.recipe.registry import get_pass
from compress.recipe.search_spec import SearchSpec
from compress.recipe.validation import describe_errors
from compress.recipe.yaml_safe import read_yaml

MAX_BATCH = 4096  # batch sizes meet the machine's memory: larger ones are surely a typo (1e12)


class ModelSpec(StrictModel):
    """How the CLI builds the model: a factory, a checkpoint, or both."""

    factory: str | None = Field(None, description="package.module:function returning an nn.Module")
    checkpoint: str | None = Field(None, description="safetensors / state_dict file, or a Hugging Face folder")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the factory")
    hf_class: str | None = Field(
        None,
        description="the transformers class that loads a Hugging Face folder with its task head, e.g. "
        "BertForSequenceClassification; default: the class its config.json names in architectures",
    )
    trust_checkpoint: bool = Field(False, description="allow full unpickling (can run code); only for trusted files")


class DataSpec(StrictModel):
    """A factory returning ``compress.TaskData`` (or a dict with its fields)."""

    factory: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class TaskSpec(StrictModel):
    """The metric evaluated after every stage and on every artifact."""

    metric: str = Field("accuracy", description="accuracy, embedding_similarity, or package.module:function")


class ParitySpec(StrictModel):
    """Tolerances of the ONNX Runtime vs torch comparison on held-out inputs.

    A tolerance that would switch its check off (an infinite ``atol``, a cosine floor of -1, an
    agreement floor of 0) is refused: a report must never say "passed" for a check that was not made.
    """

    atol: float = Field(1e-4, gt=0, allow_inf_nan=False, description="largest allowed absolute difference")
    min_cosine: float = Field(0.9999, gt=-1, le=1, description="smallest allowed per-sample cosine similarity")
    min_top1_agreement: float = Field(0.99, gt=0, le=1, description="classifiers: share of equal argmax")
    samples: PositiveInt = Field(256, le=100_000, description="held-out samples compared")
    quantized_min_cosine: float = Field(0.9, gt=-1, le=1, description="quantized artifacts: smallest cosine")
    quantized_min_top1_agreement: float = Field(0.9, gt=0, le=1, description="quantized classifiers: argmax agreement")


class ExportSpec(StrictModel):
    enabled: bool = True
    opset: int = Field(18, ge=14, le=23)
    dynamic_batch: bool = Field(
        True, description="dynamic batch (and sequence) axes; false: fixed input shapes, as edge runtimes want"
    )
    fixed_batch_size: PositiveInt = Field(1, le=MAX_BATCH, description="the batch size of fixed input shapes")
    external_data: Literal["auto", "always", "never"] = Field(
        "auto", description="weights in a .data file beside the .onnx; auto: past protobuf's 2 GB limit"
    )
    ort_format: bool = Field(False, description="also convert each artifact to ORT format (.ort) for ORT Mobile")
    ort_optimization: Literal["fixed", "runtime"] = Field(
        "fixed", description="fixed: optimized for the CPU EP now; runtime: left to NNAPI/CoreML at load time"
    )
    check_providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider", "CUDAExecutionProvider"],
        max_length=16,
        description="execution providers every artifact's nodes are checked against (where installed)",
    )
    baseline: bool = Field(True, description="also export the uncompressed model, for comparison")
    exporter: Literal["auto", "dynamo", "torchscript"] = Field(
        "auto", description="torch exporter of fp32 artifacts; auto: dynamo, falling back to TorchScript on failure"
    )
    output_name: str = Field("output", max_length=200)
    kv_cache: bool = Field(
        True,
        description="a causal LM (a Hugging Face model that generates) is exported with its KV cache, in the "
        "onnxruntime-genai/Optimum signature, so the artifact can generate; false: one forward pass",
    )
    hf_folder: bool = Field(
        False,
        description="also save the compressed transformers model as a Hugging Face folder (artifacts/compressed.hf, "
        "a sentence-transformers folder for sentence encoders) with a model card; a cut no config describes is "
        "said in one line",
    )
    decoder_graph: Literal["auto", "genai_builder", "torch"] = Field(
        "auto",
        description="the graph of a decoder with its cache: genai_builder = onnxruntime-genai's builder "
        "(GroupQueryAttention, fused norms; faster), torch = torch's exporter; auto: the builder where it knows "
        "the family and matches torch, else torch",
    )
    parity: ParitySpec = Field(default_factory=ParitySpec)


class MlflowSpec(StrictModel):
    """Where ``report.mlflow`` logs each run (and each search trial, as a child run)."""

    tracking_uri: str | None = Field(
        None,
        max_length=2000,
        description="MLflow tracking URI (a server, sqlite:///..., a folder); default: $MLFLOW_TRACKING_URI, "
        "else an SQLite store in the run folder (mlflow/)",
    )
    experiment: str | None = Field(None, max_length=500, description="MLflow experiment; default: the recipe name")


class GenerationSpec(StrictModel):
    """The generation benchmark of decoders (``export/measure/generation.py``): every passed artifact with an
    onnxruntime-genai folder generates ``new_tokens`` greedy tokens after a ``prompt_tokens`` prompt at each
    of the report's batch sizes, the rows taking turns for ``rounds`` rounds."""

    enabled: bool = True
    prompt_tokens: int = Field(64, ge=1, le=32_768)
    new_tokens: int = Field(32, ge=2, le=4096)
    rounds: int = Field(5, ge=1, le=1000)


class ReportSpec(StrictModel):
    batch_sizes: list[Annotated[int, Field(ge=1, le=MAX_BATCH)]] = Field(
        default_factory=lambda: [1, 32], min_length=1, max_length=16
    )
    warmup: int = Field(10, ge=0, le=10_000)
    iterations: int = Field(100, ge=1, le=100_000)
    max_seconds: float = Field(5.0, gt=0, le=3600, description="time budget per measurement")
    threads: int | None = Field(None, ge=1, le=1024, description="ONNX Runtime intra-op threads; default: all cores")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)

    @field_validator("threads")
    @classmethod
    def _cap_threads(cls, threads: int | None) -> int | None:
        # More threads than cores only makes ONNX Runtime spin against itself (1024 hung for minutes).
        cores = usable_cores()
        if threads is not None and threads > cores:
            log.warn(f"report.threads: {threads} is more than the {cores} usable cores; using {cores}")
            return cores
        return threads

    max_metric_drop: float = Field(
        0.01, ge=0, description="artifacts within this metric drop of the baseline qualify for the recommendation"
    )
    mlflow: MlflowSpec | None = Field(
        None, description="log the run to MLflow (pip install modelpress[mlflow]); absent: off"
    )


class Recipe(StrictModel):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$", max_length=100)
    seed: int = Field(0, ge=0, le=2**32 - 1, description="torch/numpy seeds take 32 bits")
    model: ModelSpec | None = None
    data: DataSpec | None = None
    task: TaskSpec = Field(default_factory=TaskSpec)
    passes: list[SerializeAsAny[PassConfig]] = Field(default_factory=list, max_length=100)
    export: ExportSpec = Field(default_factory=ExportSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    search: SearchSpec | None = Field(None, description="what `modelpress search` tries; `modelpress run` ignores it")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        # The name is the default run folder: '.' or '..' would put the run into the user's folders.
        if set(name) == {"."}:
            raise ValueError(f"{name!r} is not a plain folder name; use letters, digits, '_', '-' or '.'")
        return name

    def to_dict(self) -> dict[str, Any]:
        body = self.model_dump(mode="json", exclude={"passes"})
        if body["search"] is None:  # absent unless given: recipes (and their hashes) stay as they were
            del body["search"]
        if not body["export"]["hf_folder"]:  # the same for the options of issue 31
            del body["export"]["hf_folder"]
        if body["report"]["mlflow"] is None:
            del body["report"]["mlflow"]
        return {**body, "passes": [p.to_dict() for p in self.passes]}

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def identity(self) -> dict[str, Any]:
        """What makes a run folder this recipe's: its name and its inputs (model, data, task).
        Passes may change between reruns: the folder then resumes from the first changed pass."""
        body = self.model_dump(
            mode="json", include={"name", "model", "data", "task"}, exclude={"model": {"trust_checkpoint"}}
        )
        return {"name": self.name, "sha256": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()}


def parse_pass(entry: Any, where: str) -> PassConfig:
    """One entry of ``passes``: a PassConfig, or ``{"pass": name, **params}``."""
    if isinstance(entry, PassConfig):
        return entry
    if not isinstance(entry, Mapping) or "pass" not in entry:
        raise RecipeError(f"{where}: expected a mapping like {{pass: magnitude_prune, sparsity: 0.5}}; got {entry!r}")
    params = dict(entry)
    name = params.pop("pass")
    try:
        spec = get_pass(str(name))
    except RecipeError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    try:
        return spec.config_cls.model_validate(params)
    except ValidationError as exc:
        raise RecipeError(describe_errors(exc, spec.config_cls, f"{where} ({name})")) from None


def parse_recipe(doc: Any) -> Recipe:
    """Validate a recipe document; every problem is reported in one RecipeError."""
    if isinstance(doc, Recipe):
        return doc
    if not isinstance(doc, Mapping):
        raise RecipeError(f"recipe: expected a mapping of sections; got {type(doc).__name__}")
    problems: list[str] = []
    passes_doc = doc.get("passes") or []
    if not isinstance(passes_doc, Sequence) or isinstance(passes_doc, (str, bytes)):
        problems.append("passes: expected a list of passes")
        passes_doc = []
    passes = []
    for index, entry in enumerate(passes_doc):
        try:
            passes.append(parse_pass(entry, f"passes[{index}]"))
        except RecipeError as exc:
            problems.extend(exc.problems)
    try:
        recipe = Recipe.model_validate({**doc, "passes": []})
    except ValidationError as exc:
        problems = describe_errors(exc, Recipe) + problems
    else:
        for index, config in enumerate(passes):
            where = f"passes[{index}] ({config.pass_name})"
            problems.extend(f"{where}: {line}" for line in config.check_recipe(recipe.export.opset))
        problems.extend(_check_variant_names(passes))
    if problems:
        raise RecipeError(problems)
    return recipe.model_copy(update={"passes": passes})


RESERVED_NAMES = {"baseline", "compressed"}  # the fp32 artifacts every run writes


def _check_variant_names(passes: list[PassConfig]) -> list[str]:
    """ONNX variant names become file names in artifacts/: plain, unique, and not an fp32 artifact's."""
    problems, seen = [], set()
    for index, config in enumerate(passes):
        for spec in config.onnx_variants():
            name = getattr(spec, "name", None)
            if name is None:
                continue
            where = f"passes[{index}] ({config.pass_name}): onnx variant name {name!r}"
            if name in RESERVED_NAMES:
                problems.append(f"{where} is the fp32 artifact's name; choose another, e.g. {name}-int8")
            elif name.startswith("."):
                problems.append(f"{where} starts with '.' (a hidden file, or a path); use a plain name")
            elif name in seen:
                problems.append(f"{where} is used twice; give each variant its own name")
            seen.add(name)
    return problems


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load_recipe(source: str | Path | Mapping | Recipe | Sequence[PassConfig]) -> Recipe:
    """A Recipe from a YAML path, a dict, a Recipe, or a list of pass configs.

    Relative checkpoint paths in a YAML file are resolved against the file's folder.
    """
    if isinstance(source, Recipe):
        return source
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        return parse_recipe({"passes": list(source)})
    if isinstance(source, Mapping):
        return parse_recipe(source)
    path = Path(source)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found; check the path")
    doc = read_yaml(path)
    try:
        recipe = parse_recipe(doc)
    except RecipeError as exc:
        raise RecipeError([f"{path}: {line}" for line in exc.problems]) from None
    return _resolve_paths(recipe, path.parent)


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    if recipe.model is None or recipe.model.checkpoint is None:
        return recipe
    checkpoint = Path(recipe.model.checkpoint).expanduser()
    if checkpoint.is_absolute():
        return recipe
    # abspath, not resolve: a link loop (or any link) is left for the loader to refuse in one line
    model = recipe.model.model_copy(update={"checkpoint": os.path.abspath(base / checkpoint)})
    return recipe.model_copy(update={"model": model})
