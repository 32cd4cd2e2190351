"""Suite minilm-sts: all-MiniLM-L6-v2 on STS-B dev, modelpress beside the peers users would pick.

Rows: the fp32 ONNX export; ONNX Runtime ``quantize_dynamic`` (per-tensor, as shipped, and
per-channel); ONNX Runtime MatMulNBits 4-bit with its defaults; torch dynamic int8; bitsandbytes
NF4 in torch; modelpress int8 and int4 from the shipped recipe ``minilm-quant.yaml``; modelpress
prune + distill + int8 (two variants) from ``minilm-full.yaml``. Every row starts from the same
fp32 model, and the peers run with their documented defaults.

The prune + distill rows run the recipe into ``$MODELPRESS_BENCH_RUNS/minilm-full`` (default
``runs/minilm-full``, the folder ``modelpress run compress/recipes/minilm-full.yaml`` writes), so a
completed run is resumed rather than distilled again; their compress time is the stages' recorded
time plus this run's export and quantization.
"""

import copy
import os
from pathlib import Path

import torch

from benchmarks.harness import Row, measure, timed, write_results
from compress.models.data import TaskData, take_rows
from compress.models.evaluate import EVALUATORS
from compress.recipe.schema import load_recipe
from export.onnx.exporter import to_onnx

RECIPES = Path(__file__).resolve().parent.parent / "compress" / "recipes"
RECIPE = RECIPES / "minilm-quant.yaml"
FULL_RECIPE = RECIPES / "minilm-full.yaml"
# Quick mode smoke-tests the suite's code on the first of the six blocks (real weights): its
# figures are not all-MiniLM-L6-v2's, and it costs a sixth of the full model's time.
QUICK_DEPTH = 1
QUICK_NOTE = f" (quick mode: the first {QUICK_DEPTH} of 6 blocks)"


def encoder(quick: bool) -> torch.nn.Module:
    """all-MiniLM-L6-v2 in eval mode; in quick mode its first ``QUICK_DEPTH`` blocks only."""
    from compress.models.hf import sentence_encoder
    from compress.passes.layer_drop import drop_blocks, find_blocks

    model = sentence_encoder().eval()
    if quick:
        drop_blocks(model, find_blocks(model, None)[0], list(range(QUICK_DEPTH)))
    return model


def _stsb_path() -> str:
    return os.environ.get("MODELPRESS_STSB", str(Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb"))


def _ort_dynamic(fp32: Path, work: Path, per_channel: bool) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    out = work / f"ort-dynamic-{'pc' if per_channel else 'pt'}.onnx"
    quantize_dynamic(str(fp32), str(out), per_channel=per_channel)
    return out


def _ort_nbits(fp32: Path, work: Path) -> Path:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)))
    quantizer.process()
    out = work / "ort-matmulnbits.onnx"
    quantizer.model.save_model_to_file(str(out), False)
    return out


def _torch_dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)


def _bnb_nf4(model: torch.nn.Module) -> torch.nn.Module:
    from compress.passes.quantize import BitsAndBytesSpec
    from compress.quant.bnb import quantize_named

    quantized = copy.deepcopy(model)
    names = [n for n, m in quantized.named_modules() if isinstance(m, torch.nn.Linear)]
    return quantize_named(quantized, names, BitsAndBytesSpec(scheme="nf4")).eval()


def _modelpress_rows(model, recipe, data, evaluator, example, work: Path, quick: bool) -> list[Row]:
    from export.quantize.variants import build_variant

    rows = []
    for spec in recipe.passes[0].onnx_variants():
        if quick:  # a budget's verdict on two validation batches is noise
            spec = spec.model_copy(update={"max_metric_drop": None})
        record, seconds = timed(lambda s=spec: build_variant(s, s.name, model, recipe, evaluator, data, example, work))
        budget = record.get("budget")
        verdict = f"budget drop on validation {budget['drop']:+.3f}" if budget else "no budget (quick mode)"
        note = (
            f"{record['scheme']}, {record['quantized_nodes']} nodes quantized, kept float: "
            f"{record['float_nodes'] or 'none'}; {verdict}"
        )
        rows.append(Row(f"modelpress {spec.name}", "modelpress", seconds, onnx=work / record["path"], note=note))
    return rows


def _full_pipeline_rows(data: TaskData, work: Path, quick: bool) -> list[Row]:
    """prune → distill → int8 as ``minilm-full.yaml`` runs it (quick: 32 distillation steps, no budget)."""
    from compress import api

    recipe = load_recipe(FULL_RECIPE)
    out = Path(os.environ.get("MODELPRESS_BENCH_RUNS", "runs")) / "minilm-full"
    if quick:
        # 32 steps of distillation (a step bound, so a loaded machine gets the same model); no budget,
        # whose verdict on two validation batches is noise.
        quick_updates = {"distill": {"max_steps": 32}, "quantize": {"max_metric_drop": None}}
        passes = [p.model_copy(update=quick_updates.get(p.pass_name, {})) for p in recipe.passes]
        recipe, out = recipe.model_copy(update={"passes": passes}), work / "minilm-full"
    result, export_seconds = timed(lambda: api.run(encoder(quick), recipe, data, out_dir=out, report=False))
    stage_seconds = sum(s.seconds for s in result.stages)
    stages = ", ".join(f"{s.name} {s.metric:.2f}" for s in result.stages)
    return [
        Row(
            f"modelpress prune + distill + {record['name']}",
            "modelpress",
            stage_seconds + export_seconds,
            onnx=out / record["path"],
            note=f"{record['quantized_nodes']} nodes quantized, opset {record['opset']}; torch stages: {stages}",
        )
        for record in result.artifacts
        if record.get("scheme") and record["status"] == "passed"
    ]


def run(out_dir: Path, work: Path, quick: bool = False) -> Path:
    from compress.models.hf import stsb_data

    evaluator = EVALUATORS["embedding_similarity"]
    full = stsb_data(_stsb_path())
    eval_batches = list(full.eval)[:4] if quick else list(full.eval)
    data = TaskData(
        eval=eval_batches,
        validation=list(full.validation)[:2] if quick else full.validation,
        calibration=full.calibration,
    )
    model = encoder(quick)
    example = take_rows(eval_batches[0][0], 2)
    recipe = load_recipe(RECIPE)
    fp32, export_seconds = timed(lambda: to_onnx(model, example, work / "fp32.onnx", recipe.export.opset).path)
    rows = [
        Row("fp32 (ONNX)", "torch.onnx + onnxruntime", export_seconds, onnx=fp32),
        Row("fp32 (torch)", "torch eager", 0.0, module=model),
    ]
    for per_channel in (False, True):
        path, seconds = timed(lambda pc=per_channel: _ort_dynamic(fp32, work, pc))
        label = "per-channel" if per_channel else "per-tensor (default)"
        rows.append(Row(f"ORT quantize_dynamic {label}", "onnxruntime", seconds, onnx=path))
    path, seconds = timed(lambda: _ort_nbits(fp32, work))
    rows.append(Row("ORT MatMulNBits 4-bit (defaults)", "onnxruntime", seconds, onnx=path))
    module, seconds = timed(lambda: _torch_dynamic_int8(model))
    rows.append(Row("torch dynamic int8", "torch.ao", seconds, module=module))
    module, seconds = timed(lambda: _bnb_nf4(model))
    rows.append(Row("bitsandbytes nf4 (torch)", "bitsandbytes", seconds, module=module))
    rows += _modelpress_rows(model, recipe, data, evaluator, example, work, quick)
    full_data = full if not quick else TaskData(eval=eval_batches, validation=data.validation, train=full.train)
    rows += _full_pipeline_rows(full_data, work, quick)
    sample = eval_batches[0][0]
    measure(
        rows,
        evaluator,
        eval_batches,
        sample,
        [1, 32],
        rounds=3 if quick else 15,
        calls_per_round={1: 3 if quick else 40, 32: 1 if quick else 3},
    )
    context = {
        "data": f"STS-B dev, {sum(len(b[2]) for b in eval_batches)} pairs" + (QUICK_NOTE if quick else ""),
        "latency": "median over rounds in which the rows take turns; batch 1 and 32 rows of the first dev batch",
        "threads": rows[0].results["threads"],
    }
    return write_results("minilm-sts" + ("-quick" if quick else ""), rows, "spearman", out_dir, context)
