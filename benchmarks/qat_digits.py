"""Suite qat-digits: where post-training int8 static loses accuracy, QAT wins it back (accuracy only).

The model is a depthwise-separable (MobileNet-style) CNN trained on scikit-learn's digits, seeded and
bounded by epochs. Depthwise convolutions are the known weak spot of post-training int8 with
per-tensor activations: after BatchNorm folding their channels span very different ranges, and one
scale per tensor must cover the widest. Rows, each scored in ONNX Runtime on the held-out split:
- fp32: the exported float model;
- int8 static (PTQ): ``quantize`` with ``onnx: [{scheme: int8_static}]`` (ORT's quantize_static,
  per-channel weights, minmax calibration on 256 training images);
- int8 QAT: the ``qat`` pass (fake quantization of the same arithmetic, distilled from the float
  model for a fixed number of epochs) and its ``compressed-int8_qat`` artifact.
No latency: this suite is about accuracy, which does not depend on the machine's load.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from compress import api
from compress.demo.digits import load_data, train
from compress.evaluate import EVALUATORS
from compress.io import write_json_atomic, write_text_atomic
from export.runtime import make_session, ort_predictor

SEED = 0
TRAIN_EPOCHS = 12
QAT_EPOCHS = 4


def _block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU(),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


class DigitsSeparableCNN(nn.Module):
    """A 3x3 stem, then depthwise 3x3 + pointwise 1x1 blocks; global pooling; a linear classifier."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 64), num_classes: int = 10):
        super().__init__()
        layers = [nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
        for i, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
            layers += _block(c_in, c_out, 2 if i < 2 else 1)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def trained_model(epochs: int = TRAIN_EPOCHS, seed: int = SEED) -> DigitsSeparableCNN:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitsSeparableCNN()
    return train(model, epochs=epochs, seed=seed)


def _recipe(name: str, passes: list[dict]) -> dict:
    return {
        "name": name,
        "seed": SEED,
        "task": {"metric": "accuracy"},
        "passes": passes,
        "export": {"ort_format": False, "baseline": True},
    }


RECIPES = {
    "int8 static (PTQ)": ([{"pass": "quantize", "onnx": [{"scheme": "int8_static"}]}], "compressed-int8_static"),
    "int8 QAT": ([{"pass": "qat", "epochs": QAT_EPOCHS, "lr": 5e-4}], "compressed-int8_qat"),
}


def _ort_accuracy(path: Path, data) -> float:
    return EVALUATORS["accuracy"].score(ort_predictor(make_session(path)), data.batches("eval"))


def run(out_dir: Path, work: Path, quick: bool = False) -> Path:
    data = load_data()
    model = trained_model(epochs=2 if quick else TRAIN_EPOCHS)
    rows, fp32 = [], None
    for name, (passes, artifact) in RECIPES.items():
        if quick and passes[0]["pass"] == "qat":
            passes = [{**passes[0], "epochs": 1}]
        out = work / artifact
        result = api.run(model, _recipe(artifact, passes), data, out_dir=out, report=False)
        if result.failures:
            raise RuntimeError(f"qat-digits row {name!r} failed: {result.failures}")
        if fp32 is None:
            fp32 = _ort_accuracy(out / "artifacts" / "baseline.onnx", data)
            rows.append({"name": "fp32 (ONNX)", "accuracy": fp32})
        record = next(a for a in result.artifacts if a["name"] == artifact)
        rows.append(
            {
                "name": name,
                "accuracy": _ort_accuracy(out / "artifacts" / f"{artifact}.onnx", data),
                "torch_accuracy": result.stages[-1].metric,
                "parity": record["parity"],
                "size_bytes": record["size_bytes"],
                "op_counts": record["op_counts"],
            }
        )
    for row in rows:
        row["points_vs_fp32"] = round(100 * (row["accuracy"] - fp32), 3)
    images = sum(len(batch[1]) for batch in data.batches("eval"))
    suite = "qat-digits" + ("-quick" if quick else "")
    body = {
        "suite": suite,
        "metric": "accuracy in ONNX Runtime (CPU), held-out digits split",
        "data": f"scikit-learn digits, held-out split, {images} images (1 image = {100 / images:.2f} points)",
        "model": f"DigitsSeparableCNN, trained {TRAIN_EPOCHS if not quick else 2} epochs, seed {SEED}",
        "qat": f"{QAT_EPOCHS if not quick else 1} epochs of distillation from the fp32 model, lr 5e-4",
        "rows": rows,
    }
    path = out_dir / f"{suite}.json"
    write_json_atomic(path, body)
    lines = [
        f"# {suite}",
        "",
        f"{body['data']}; model: {body['model']}; QAT: {body['qat']}.",
        "",
        "| row | accuracy (ORT) | points vs fp32 | accuracy (torch) | parity vs source: max abs diff |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        parity = row.get("parity", {}).get("max_abs_diff")
        torch_accuracy = "–" if row.get("torch_accuracy") is None else f"{row['torch_accuracy']:.4f}"
        parity = "–" if parity is None else f"{parity:.4g}"
        lines.append(
            f"| {row['name']} | {row['accuracy']:.4f} | {row['points_vs_fp32']:+.2f} | {torch_accuracy} | {parity} |"
        )
    lines += [
        "",
        "PTQ's torch accuracy is the float model's (quantization happens in ONNX Runtime); QAT's is the",
        "fake-quant model's, which its int8 artifact reproduces (parity: max abs difference of the logits,",
        "ORT vs the artifact's torch source: the float model for PTQ, the fake-quant model for QAT).",
    ]
    write_text_atomic(path.with_suffix(".md"), "\n".join(lines) + "\n")
    return path
