"""Suite digits-cnn: the demo CNN (a residual CNN trained on scikit-learn's digits), full recipe and
each stage alone.

Rows: the fp32 ONNX export; structured pruning alone (half of every channel group, no recovery);
pruning then distillation; int8 static quantization alone; the full recipe (``demo.yaml``:
prune → distill → int8). Distillation alone is not a row: with nothing removed there is nothing
for it to recover, so it is measured where it acts, after pruning. Each row is one
``compress.run`` of the demo recipe with a subset of its passes, so the rows are what a user gets.
"""

import copy
from pathlib import Path

import yaml

from benchmarks.harness import Row, measure, timed, write_results
from compress import api
from compress.cli import demo_recipe_path
from compress.demo.digits import load_data, pretrained_model
from compress.models.data import take_rows
from compress.models.evaluate import EVALUATORS

# Row name -> the demo recipe's passes it keeps, and the artifact it ships.
ROWS = {
    "structured prune": (("structured_prune",), "compressed"),
    "prune + distill": (("structured_prune", "distill"), "compressed"),
    "int8 static": (("quantize",), "int8"),
    "full recipe (prune + distill + int8)": (("structured_prune", "distill", "quantize"), "int8"),
}


def _recipe(passes: tuple[str, ...], quick: bool) -> dict:
    recipe = yaml.safe_load(demo_recipe_path().read_text())
    recipe["passes"] = [copy.deepcopy(p) for p in recipe["passes"] if p["pass"] in passes]
    for config in recipe["passes"]:
        if quick and config["pass"] == "distill":
            config["epochs"] = 1
    recipe["export"]["ort_format"] = False
    return recipe


def _build(name: str, passes: tuple[str, ...], artifact: str, data, work: Path, quick: bool) -> tuple[Row, Path]:
    out = work / name.split(" (")[0].replace(" ", "-").replace("+", "and")
    result, seconds = timed(
        lambda: api.run(pretrained_model(), _recipe(passes, quick), data, out_dir=out, report=False)
    )
    if result.failures:
        raise RuntimeError(f"digits-cnn row {name!r} failed: {result.failures}")
    stages = " → ".join(f"{s.name} {s.metric:.4f}" for s in result.stages)
    row = Row(name, "modelpress", seconds, onnx=out / "artifacts" / f"{artifact}.onnx", note=f"torch: {stages}")
    return row, out / "artifacts" / "baseline.onnx"


def run(out_dir: Path, work: Path, quick: bool = False) -> Path:
    data = load_data()
    rows, baseline = [], None
    for name, (passes, artifact) in ROWS.items():
        row, baseline = _build(name, passes, artifact, data, work, quick)
        rows.append(row)
    rows.insert(0, Row("fp32 (ONNX)", "torch.onnx + onnxruntime", 0.0, onnx=baseline))
    eval_batches = list(data.eval)
    sample = eval_batches[0][0]
    measure(
        rows,
        EVALUATORS["accuracy"],
        eval_batches,
        take_rows(sample, 32),
        [1, 32],
        rounds=3 if quick else 15,
        calls_per_round={1: 5 if quick else 200, 32: 2 if quick else 30},
    )
    context = {
        "data": f"scikit-learn digits, held-out split, {sum(len(b[1]) for b in eval_batches)} images"
        + (" (quick mode: 1 distillation epoch)" if quick else ""),
        "latency": "median over rounds in which the rows take turns; ONNX Runtime CPU, all graph optimizations",
        "compress time": "one `compress.run` per row: passes, ONNX export and parity (and calibration for int8)",
        "threads": rows[0].results["threads"],
    }
    return write_results("digits-cnn" + ("-quick" if quick else ""), rows, "accuracy", out_dir, context)
