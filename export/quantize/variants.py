"""The quantized ONNX artifacts a recipe's quantize pass asks for, built within its accuracy budget.

Per variant: export the fp32 source graph (with the variant's exporter and opset), apply
ONNX Runtime's transformer fusions when asked, quantize, and when a budget is set, keep
the most sensitive weight nodes in float until the metric drop on the budget split fits
(ranked first by output SQNR on calibration data, ``export/quantize/sensitivity.py``). The record
names the nodes kept in float and says whether the budget was met.
"""

import tempfile
from pathlib import Path
from typing import Any

import onnx
import torch

from compress.core import log
from compress.core.errors import InputError, ModelpressError, first_line
from compress.core.io import write_atomic
from compress.core.progress import progress
from compress.models.data import TaskData
from compress.models.evaluate import Evaluator
from compress.quant.budget import candidate_count, fit_budget
from compress.recipe.schema import Recipe
from export.errors import ExportError
from export.onnx.exporter import export_onnx
from export.onnx.runtime import file_batch_size, make_session, ort_predictor
from export.onnx.scratch import own_cwd
from export.onnx.validate import quantized_parity
from export.quantize import int4_algorithms
from export.quantize.float_nodes import check_excluded, float_reasons, unfuse_gemm
from export.quantize.onnx_quant import (
    PRECISION,
    SCHEMES,
    WEIGHT_INPUTS,
    CalibrationReader,
    auto_scheme_of_module,
    check_tables,
    int4_ops,
    name_nodes,
    resolve_scheme,
    scheme_advice,
    weight_nodes,
)
from export.quantize.records import checked, quantized_record
from export.quantize.sensitivity import node_sqnr
from export.runfolder.artifacts import artifacts_dir, save_record


def _attention_dims(torch_model: torch.nn.Module) -> tuple[int, int]:
    """(heads, attention width) of the first attention module, as pruning left it; (0, 0) = let ORT guess."""
    for module in torch_model.modules():
        if hasattr(module, "num_attention_heads") and hasattr(module, "all_head_size"):
            return int(module.num_attention_heads), int(module.all_head_size)
    return 0, 0


def _optimized(path: Path, model_type: str, torch_model: torch.nn.Module, keep_gathers: bool) -> onnx.ModelProto:
    """ONNX Runtime's transformer fusions. ``keep_gathers`` leaves the embedding lookups as Gather
    nodes instead of fusing them into EmbedLayerNormalization, so that int4 can pack their tables."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    heads, width = _attention_dims(torch_model)
    options = FusionOptions(model_type)
    options.enable_embed_layer_norm = not keep_gathers
    # opt_level 0: only the transformer fusions; ONNX Runtime's own passes run at load time.
    optimized = optimize_model(
        str(path), model_type=model_type, num_heads=heads, hidden_size=width, opt_level=0, optimization_options=options
    )
    fused = {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}
    log.info(f"  fused for {model_type}: {fused or 'nothing'}")
    graph = optimized.model
    if any(node.domain == "com.microsoft" for node in graph.graph.node) and not any(
        o.domain == "com.microsoft" for o in graph.opset_import
    ):
        graph.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return graph


def _prepare(spec, torch_model, recipe: Recipe, example_inputs, work: Path) -> tuple[Path, dict]:
    """The fp32 graph this variant quantizes (exported, optionally fused, pre-processed, nodes named)
    and the facts of its export (which exporter; ``kv_cache`` for a decoder that generates)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = work / "source.onnx"
    export = recipe.export
    _, made_by = export_onnx(
        torch_model,
        example_inputs,
        source,
        spec.opset or export.opset,
        export.dynamic_batch,
        export.output_name,
        exporter=spec.exporter,
        kv_cache=export.kv_cache,
        decoder_graph=export.decoder_graph,
    )
    if "exporter_fallback" in made_by:
        log.warn(f"  fp32 source exported with TorchScript ({made_by['exporter_fallback']})")
    if spec.optimize != "none":
        onnx.save(_optimized(source, spec.optimize, torch_model, spec.int4_embeddings), str(source))
    prepared = work / "prepared.onnx"
    # ONNX Runtime's own pre-processing: shape inference and graph optimization (folding, fusions)
    # before quantizing, so the quantizer sees the graph the runtime will run.
    with own_cwd():  # ORT writes its temporary files into the cwd
        quant_pre_process(str(source.resolve()), str(prepared.resolve()), skip_symbolic_shape=True)
    onnx.save(name_nodes(onnx.load(str(prepared))), str(prepared))
    return prepared, made_by


# Scheme -> rewrite of the prepared graph before quantizing: ORT's pre-processing fuses Linear layers
# into Gemm, which MatMulNBits does not pack.
GRAPH_REWRITES = {"int4": unfuse_gemm}


def _calibrates(spec, scheme: str) -> bool:
    """Whether the variant read calibration rows: int8 static, and int4 algorithms that calibrate (GPTQ)."""
    return scheme == "int8_static" or (
        scheme == "int4" and int4_algorithms.ALGORITHMS[spec.algorithm].needs_calibration
    )


def build_variant(
    spec,
    name: str,
    torch_model: torch.nn.Module,
    recipe: Recipe,
    evaluator: Evaluator,
    data: TaskData,
    example_inputs: Any,
    out_dir: Path,
) -> dict:
    """Export, quantize (within the budget) and check one variant; return its artifact record."""
    path = artifacts_dir(out_dir) / f"{name}.onnx"
    with tempfile.TemporaryDirectory(prefix="modelpress-quant-") as scratch:
        work = Path(scratch)
        prepared, made_by = _prepare(spec, torch_model, recipe, example_inputs, work)
        graph = onnx.load(str(prepared))
        scheme = resolve_scheme(spec, graph)
        if scheme in GRAPH_REWRITES:  # before the node list: the rewritten nodes are candidates too
            graph = GRAPH_REWRITES[scheme](graph)
            onnx.save(graph, str(prepared))
        advice = scheme_advice(spec, graph)
        if advice:
            log.warn(f"  {name}: {advice}", collect=False)  # the guardrail decides whether the report keeps it
        check_tables(graph, spec)  # once, on the prepared graph, not in every budget trial
        # int4 without quantize_embeddings leaves the tables alone: they are no candidates either
        skipped = [*spec.exclude_ops, *(["Gather"] if scheme == "int4" and "Gather" not in int4_ops(spec) else [])]
        check_excluded(spec.exclude_nodes, weight_nodes(graph, scheme), f"this graph has no {scheme} weight node",
                       "the fp32 artifact's node names")  # fmt: skip
        nodes = [n for n in weight_nodes(graph, scheme, skipped) if n not in spec.exclude_nodes]
        split = data.resolve(spec.budget_split)

        def quantize(quantized: list[str], target: Path) -> Path:
            excluded = [*spec.exclude_nodes, *(n for n in nodes if n not in quantized)]
            try:
                with own_cwd():  # shape inference and calibrators write temporary files into the cwd
                    SCHEMES[scheme](prepared.resolve(), target.resolve(), spec, excluded, data)
            except ModelpressError:
                raise
            except Exception as exc:  # noqa: BLE001  (onnxruntime.quantization raises bare exceptions)
                raise ExportError(
                    f"onnxruntime.quantization ({scheme}) failed on {name}: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}; leave the failing op in float with "
                    "exclude_ops or exclude_nodes"
                ) from None
            return target

        def score(graph_path: Path) -> float:
            return evaluator.score(ort_predictor(make_session(graph_path)), data.batches(split))

        def rank() -> dict[str, float | None] | None:
            try:
                feeds = CalibrationReader(data, spec.calibration.samples, file_batch_size(prepared)).feeds
            except InputError as exc:
                log.warn(f"  {name}: no SQNR ranking ({first_line(exc)}); the budget measures every node")
                return None
            return node_sqnr(prepared, quantize(nodes, work / "ranking.onnx"), nodes, feeds, work)

        budget = None
        if spec.max_metric_drop is not None:
            reference = score(prepared)
            budget = fit_budget(
                nodes,
                lambda q: score(quantize(q, work / "trial.onnx")),
                reference,
                spec.max_metric_drop,
                rank,
                candidate_count(spec.sensitivity_candidates),
                evaluator.higher_is_better,
            )
        budget_float = budget.float_layers if budget else []
        write_atomic(path, lambda tmp: quantize([n for n in nodes if n not in budget_float], tmp))
    asked = tuple(op for op in WEIGHT_INPUTS[scheme] if op not in skipped)
    reasons = float_reasons(onnx.load(str(path), load_external_data=False), spec, scheme, asked, budget_float)
    record = quantized_record(
        name,
        path,
        out_dir,
        spec,
        precision=PRECISION[scheme],
        scheme=scheme,
        quantized_nodes=sum(n not in reasons for n in nodes),
        float_nodes=list(reasons),
        float_reasons=reasons,
        budget={**budget.to_dict(), "split": split} if budget else None,
        calibration_samples=(
            CalibrationReader(data, spec.calibration.samples).provenance() if _calibrates(spec, scheme) else None
        ),
        **({"scheme_advice": advice} if advice else {}),
        **({"kv_cache": True} if made_by.get("kv_cache") else {}),
        **({"int4": int4_algorithms.facts(onnx.load(str(path)), spec, int4_ops(spec))} if scheme == "int4" else {}),
    )
    why = "quantized output too far from fp32"
    return checked(record, path, torch_model, quantized_parity(recipe), evaluator, data, why)


def variant_name(spec, torch_model: torch.nn.Module) -> str:
    """The one naming rule of quantized artifacts: the recipe's ``name``, else ``compressed-<scheme>``.

    ``auto`` is named by the scheme it picks (``compressed-int8_static`` for a CNN), and a torch-side
    scheme's ONNX twin by its ONNX scheme (bitsandbytes int8 -> ``compressed-int8_dynamic``), so the
    same quantization gets the same name whichever way the recipe asked for it.
    """
    if spec.name:
        return spec.name
    scheme = auto_scheme_of_module(torch_model) if spec.scheme == "auto" else spec.scheme
    return f"compressed-{scheme}"


def _build_qat_variant(spec, name, models, *args) -> dict:
    from export.quantize.qat_artifact import build_qat_variant

    if models["fake_quant"] is None:
        raise ModelpressError(f"{name}: an int8_qat artifact needs the qat pass's fake-quant model; add a qat pass")
    return build_qat_variant(spec, name, models["fake_quant"], *args)


# Scheme -> builder of its artifact; the rest quantize the float model with onnxruntime.quantization.
BUILDERS = {"int8_qat": _build_qat_variant}


def _build_ptq_variant(spec, name, models, recipe, *args) -> dict:
    from export.onnx.exporter import generates

    if spec.scheme == "int4" and recipe.export.kv_cache and generates(models["float"]):
        from export.quantize.decoder_variant import build_decoder_variant

        return build_decoder_variant(spec, name, models["float"], recipe, *args)
    if spec.accuracy_level == "auto" or spec.lm_head != "quantize" or spec.block_precision:
        raise ExportError(f"{name}: accuracy_level auto, lm_head and block_precision apply to int4 decoders "
                          "exported with their KV cache; remove them")  # fmt: skip
    return build_variant(spec, name, models["float"], recipe, *args)


def export_quantized(
    out_dir: Path,
    torch_model: torch.nn.Module,
    source_stage: str,
    variants: list,
    recipe: Recipe,
    evaluator: Evaluator,
    data: TaskData,
    example_inputs: Any,
    fake_quant_model: torch.nn.Module | None = None,
) -> list[dict]:
    """Build every requested variant; a failure is recorded in its artifact, not raised.

    ``torch_model`` is the float model ONNX Runtime quantizes; ``fake_quant_model`` the model a
    ``qat`` pass trained, whose own scales its ``int8_qat`` artifact keeps.
    """
    models = {"float": torch_model, "fake_quant": fake_quant_model}
    records, taken = [], set()
    for spec in variants:
        name = variant_name(spec, torch_model)
        name = name if name not in taken else f"{name}-{len(taken) + 1}"
        taken.add(name)
        log.info(f"quantize {name} ({spec.scheme})")
        try:
            build = BUILDERS.get(spec.scheme, _build_ptq_variant)
            with progress(f"quantizing {name} ({spec.scheme}): export, quantization, parity"):
                record = build(spec, name, models, recipe, evaluator, data, example_inputs, out_dir)
        except ModelpressError as exc:
            record = {
                "name": name,
                "format": "onnx",
                "precision": spec.scheme,
                "status": "failed",
                "error": str(exc),
                "requested_opset": spec.opset or recipe.export.opset,
            }
        record["source_stage"] = source_stage
        records.append(save_record(out_dir, record))
    return records
