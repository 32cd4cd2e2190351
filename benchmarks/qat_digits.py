"""Suite qat-digits: where post-training int8 static loses accuracy, QAT wins it back (accuracy only).

Two models, both from ``compress.demo.separable`` (a depthwise-separable, MobileNet-style CNN trained
on scikit-learn's digits, seeded and bounded by epochs): the plain one, which holds int8 well, and
``outlier_model``, the same float function with two stem channels 30x larger, where one per-tensor
activation scale must span the outliers. Rows per model, each scored in ONNX Runtime on the held-out split:
- fp32: the exported float model;
- int8 static (PTQ): ``quantize`` with ``onnx: [{scheme: int8_static}]`` (ORT's quantize_static,
  per-channel weights, minmax calibration on 256 training images);
- int8 QAT: the ``qat`` pass (fake quantization of the same arithmetic, min/max activation ranges,
  distilled from the float model for a fixed number of epochs) and its ``compressed-int8_qat`` artifact;
- int8 QAT, learned ranges: the same with ``learn_ranges`` (LSQ activation scales).
No latency: this suite is about accuracy, which does not depend on the machine's load.
"""

from pathlib import Path

from compress import api
from compress.core.io import write_json_atomic, write_text_atomic
from compress.demo.digits import load_data
from compress.demo.separable import OUTLIER_CHANNELS, OUTLIER_SCALE, TRAIN_EPOCHS, outlier_model, pretrained_model
from compress.models.evaluate import EVALUATORS
from export.onnx.runtime import make_session, ort_predictor

SEED = 0
QAT_EPOCHS = 10
QAT_LR = 3e-3
MODELS = {
    "DigitsSeparableCNN": pretrained_model,
    f"DigitsSeparableCNN, {OUTLIER_CHANNELS} stem channels x{OUTLIER_SCALE:g} (outlier_model)": outlier_model,
}


def _recipe(name: str, passes: list[dict]) -> dict:
    return {
        "name": name,
        "seed": SEED,
        "task": {"metric": "accuracy"},
        "passes": passes,
        "export": {"ort_format": False, "baseline": True},
    }


# Every row holds its weights on 7 bits (reduce_range), whatever the CPU: x86 CPUs without VNNI saturate
# at 8 bits (compress/quant/isa.py), and the rows must compare the same arithmetic on every machine.
RECIPES = {
    "int8 static (PTQ)": (
        [{"pass": "quantize", "onnx": [{"scheme": "int8_static", "reduce_range": True}]}],
        "compressed-int8_static",
    ),
    "int8 QAT": ([{"pass": "qat", "epochs": QAT_EPOCHS, "lr": QAT_LR, "reduce_range": True}], "compressed-int8_qat"),
    "int8 QAT, learned ranges": (
        [{"pass": "qat", "epochs": QAT_EPOCHS, "lr": QAT_LR, "learn_ranges": True, "reduce_range": True}],
        "compressed-int8_qat",
    ),
}


def _ort_accuracy(path: Path, data) -> float:
    return EVALUATORS["accuracy"].score(ort_predictor(make_session(path)), data.batches("eval"))


def _rows(model, data, work: Path, quick: bool) -> list[dict]:
    rows, fp32 = [], None
    for name, (passes, artifact) in RECIPES.items():
        if quick and passes[0]["pass"] == "qat":
            passes = [{**passes[0], "epochs": 1}]
        out = work / name.replace(" ", "-").replace(",", "")
        result = api.run(model, _recipe(artifact, passes), data, out_dir=out, report=False)
        if fp32 is None:
            fp32 = _ort_accuracy(out / "artifacts" / "baseline.onnx", data)
            rows.append({"name": "fp32 (ONNX)", "accuracy": fp32})
        record = next(a for a in result.artifacts if a["name"] == artifact)
        if "parity" not in record:  # not written at all: nothing to score (a parity failure is scored and shown)
            raise RuntimeError(f"qat-digits row {name!r}: {artifact} was not made: {record.get('error')}")
        rows.append(
            {
                "name": name,
                "accuracy": _ort_accuracy(out / "artifacts" / f"{artifact}.onnx", data),
                "torch_accuracy": result.stages[-1].metric,
                "status": record["status"],  # a PTQ artifact far from fp32 fails its checks: the row says so
                "parity": record["parity"],
                "size_bytes": record["size_bytes"],
                "op_counts": record["op_counts"],
            }
        )
    for row in rows:
        row["points_vs_fp32"] = round(100 * (row["accuracy"] - fp32), 3)
    return rows


def run(out_dir: Path, work: Path, quick: bool = False) -> Path:
    data = load_data()
    epochs = 2 if quick else TRAIN_EPOCHS
    models = {
        name: _rows(factory(epochs=epochs, seed=SEED), data, work / str(index), quick)
        for index, (name, factory) in enumerate(MODELS.items())
    }
    images = sum(len(batch[1]) for batch in data.batches("eval"))
    suite = "qat-digits" + ("-quick" if quick else "")
    body = {
        "suite": suite,
        "metric": "accuracy in ONNX Runtime (CPU), held-out digits split",
        "data": f"scikit-learn digits, held-out split, {images} images (1 image = {100 / images:.2f} points)",
        "training": f"each model trained {epochs} epochs, seed {SEED}",
        "qat": f"{QAT_EPOCHS if not quick else 1} epochs of distillation from the fp32 model, lr {QAT_LR}",
        "models": models,
    }
    path = out_dir / f"{suite}.json"
    write_json_atomic(path, body)
    lines = [f"# {suite}", "", f"{body['data']}; {body['training']}; QAT: {body['qat']}."]
    for name, rows in models.items():
        lines += ["", f"## {name}", "", *_table(rows), "", _verdict(rows)]
    lines += [
        "",
        "PTQ's torch accuracy is the float model's (quantization happens in ONNX Runtime); QAT's is the",
        "fake-quant model's, which its int8 artifact reproduces (parity: max abs difference of the logits,",
        "ORT vs the artifact's torch source: the float model for PTQ, the fake-quant model for QAT).",
    ]
    write_text_atomic(path.with_suffix(".md"), "\n".join(lines) + "\n")
    return path


def _table(rows: list[dict]) -> list[str]:
    lines = [
        "| row | accuracy (ORT) | points vs fp32 | accuracy (torch) | parity vs source: max abs diff | checks |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        parity = row.get("parity", {}).get("max_abs_diff")
        torch_accuracy = "–" if row.get("torch_accuracy") is None else f"{row['torch_accuracy']:.4f}"
        parity = "–" if parity is None else f"{parity:.4g}"
        lines.append(
            f"| {row['name']} | {row['accuracy']:.4f} | {row['points_vs_fp32']:+.2f} | {torch_accuracy} | {parity} "
            f"| {row.get('status', '–')} |"
        )
    return lines


def _verdict(rows: list[dict]) -> str:
    """What the rows show, from their figures: whether PTQ lost a point, and how close the best QAT came."""
    points = {row["name"]: row["points_vs_fp32"] for row in rows}
    ptq = -points["int8 static (PTQ)"]
    best = max((name for name in points if name.startswith("int8 QAT")), key=points.get)
    if ptq < 1.0:
        return (
            f"Post-training int8 static changes accuracy by {-ptq:+.2f} points (it loses less than 1): "
            "no post-training loss to recover here."
        )
    within = "within" if points[best] >= -0.3 else "not within"
    return (
        f"Post-training int8 static loses {ptq:.2f} points; the best QAT row ({best}) is at "
        f"{points[best]:+.2f} points vs fp32 ({within} 0.3 of it)."
    )
