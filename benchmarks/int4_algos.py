"""Suite int4-algos: all-MiniLM-L6-v2 on STS-B dev, int4 with each weight-only algorithm ONNX Runtime ships.

Rows: the fp32 ONNX export, then one modelpress ``int4`` artifact per algorithm that the installed
ONNX Runtime ships (``export/quantize/int4_algorithms.py``: default, rtn, k_quant, hqq, gptq), all with the
settings of the shipped recipe ``minilm-quant.yaml``'s int4 variant (block 64, accuracy_level 4,
opset 21, embedding table packed by ``default``), so rows differ only in how the MatMul weights
were chosen. GPTQ calibrates on the recipe data's calibration split (``calibration.samples`` rows).
No budget: every weight is 4-bit. Spearman on all of STS-B dev; latency at batch 1 and 32 with the
rows taking turns; the 1-minute load per core before and after timing is in the report, since the
machine may be shared. STS-B comes from ``$MODELPRESS_STSB`` (default ``../shared/data/stsb``
beside the repository).
"""

import os
from pathlib import Path

from benchmarks.harness import Row, measure, timed, write_results
from benchmarks.minilm_sts import QUICK_NOTE, RECIPE, _stsb_path, encoder
from compress.models.data import TaskData, take_rows
from compress.models.evaluate import EVALUATORS
from compress.passes.quantize import OnnxQuantSpec
from compress.recipe.schema import load_recipe
from export.measure.benchmark import load_per_core
from export.onnx.exporter import to_onnx


def _int4_spec(recipe, algorithm: str) -> OnnxQuantSpec:
    """The shipped recipe's int4 variant with ``algorithm``, named after it, without a budget."""
    shipped = next(spec for spec in recipe.passes[0].onnx_variants() if spec.scheme == "int4")
    return shipped.model_copy(update={"algorithm": algorithm, "name": f"int4-{algorithm}", "max_metric_drop": None})


def run(out_dir: Path, work: Path, quick: bool = False) -> Path:
    from compress.models.hf import stsb_data
    from export.quantize import int4_algorithms
    from export.quantize.variants import build_variant

    evaluator = EVALUATORS["embedding_similarity"]
    full = stsb_data(_stsb_path())
    eval_batches = list(full.eval)[:4] if quick else list(full.eval)
    calibration = list(full.calibration)[:1] if quick else full.calibration  # quick: GPTQ on one batch
    data = TaskData(eval=eval_batches, validation=list(full.validation)[:2], calibration=calibration)
    model = encoder(quick)
    example = take_rows(eval_batches[0][0], 2)
    recipe = load_recipe(RECIPE)
    fp32, export_seconds = timed(lambda: to_onnx(model, example, work / "fp32.onnx", recipe.export.opset).path)
    rows = [Row("fp32 (ONNX)", "torch.onnx + onnxruntime", export_seconds, onnx=fp32)]
    for algorithm in int4_algorithms.available():
        spec = _int4_spec(recipe, algorithm)
        record, seconds = timed(lambda s=spec: build_variant(s, s.name, model, recipe, evaluator, data, example, work))
        facts = record["int4"]
        calibration = record["calibration_samples"]
        note = (
            f"MatMul by {facts['ops'].get('MatMul')}, Gather by {facts['ops'].get('Gather', 'none')}; "
            f"{facts['matmul_nbits']} MatMulNBits, block {facts['block_sizes']}, accuracy_level "
            f"{facts['accuracy_levels']}, zero points {facts['zero_points']}; parity min cosine "
            f"{record['parity']['min_cosine']:.4f}"
            + (f"; calibrated on {len(calibration['indices'])} rows" if calibration else "")
        )
        rows.append(Row(spec.name, f"modelpress (ORT {algorithm})", seconds, onnx=work / record["path"], note=note))
    load_before = load_per_core()
    measure(
        rows,
        evaluator,
        eval_batches,
        eval_batches[0][0],
        [1, 32],
        rounds=3 if quick else 15,
        calls_per_round={1: 3 if quick else 40, 32: 1 if quick else 3},
    )
    context = {
        "data": f"STS-B dev, {sum(len(b[2]) for b in eval_batches)} pairs" + (QUICK_NOTE if quick else ""),
        "int4": "block 64, accuracy_level 4 (int8 compute), opset 21, embedding table by default; no budget",
        "latency": "median over rounds in which the rows take turns; batch 1 and 32 rows of the first dev batch",
        "threads": rows[0].results["threads"],
        "load per core (1-minute average) before / after timing": f"{load_before} / {load_per_core()}",
        "cpu cores": os.cpu_count(),
    }
    return write_results("int4-algos" + ("-quick" if quick else ""), rows, "spearman", out_dir, context)
