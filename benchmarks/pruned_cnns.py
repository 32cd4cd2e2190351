"""Suite pruned-cnns: does 30% channel pruning make real CNNs faster in ONNX Runtime?

ResNet-50, MobileNetV2 1.0 and ConvNeXt-tiny built from ``transformers`` configs at 224x224,
random weights with settled BatchNorm statistics (a few train-mode passes over the random
images, as a trained model has: untouched statistics let activations vanish through 50 layers,
and denormal floats would time a different arithmetic from a real model's). Per model, two rows: the fp32 baseline
and ``structured_prune`` ratio 0.3 with the pass's defaults, so the suite measures what users
get: ``round_to: auto`` rounds kept widths to multiples of 8 (widths like 11 or 45 fell off
ONNX Runtime's blocked conv kernels and made pruned CNNs slower). The row's note names the
value used. Timed at batch 32 with the rows taking turns; each pruned row's ratios are against
its own model's fp32 row, and its note gives the speed-up.
The metric column means nothing here (random weights, one set of labels for all rows);
latency and size are the figures. ``--quick`` shrinks images to 64x64 and rounds to a smoke run.
"""

import copy
from pathlib import Path

import torch

from benchmarks.harness import Row, measure, timed, write_results
from compress.engine.context import Context
from compress.models.data import TaskData
from compress.models.evaluate import EVALUATORS
from compress.passes.structured_prune import StructuredPruneConfig, structured_prune
from export.onnx.exporter import export_onnx

MODELS = {
    "resnet-50": ("ResNetConfig", {}),
    "mobilenet-v2-1.0": ("MobileNetV2Config", {"depth_multiplier": 1.0}),
    "convnext-tiny": ("ConvNextConfig", {}),
}
PRUNE = StructuredPruneConfig(ratio=0.3)  # the defaults, round_to: auto included


class Logits(torch.nn.Module):
    """The backbone's pooled output as one tensor, so ONNX has one output and rows compare alike."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values):
        return self.backbone(pixel_values).pooler_output.flatten(1)


def _build(config_class: str, fields: dict, size: int) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    model = Logits(transformers.AutoModel.from_config(getattr(transformers, config_class)(**fields)))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the settling passes
    model.train()
    with torch.no_grad():
        for _ in range(2 if norms else 0):
            model(torch.randn(8, 3, size, size))
    return model.eval()


def run(out_dir: Path, work: Path, quick: bool = False) -> Path:
    size, batch = (64, 2) if quick else (224, 32)
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    rows = []
    for name, (config_class, fields) in MODELS.items():
        model = _build(config_class, fields, size)
        with torch.no_grad():
            labels = model(images).argmax(1)
        data = TaskData(eval=[(images, labels)], calibration=[(images, labels)])
        base_path = work / f"{name}.onnx"
        export_onnx(model, images[:1], base_path)
        rows.append(Row(f"{name} fp32", "torch.onnx + onnxruntime", 0.0, onnx=base_path, reference=f"{name} fp32"))
        ctx = Context(data, images[:1], copy.deepcopy(model), None)
        pruned, seconds = timed(lambda m=model, c=ctx: structured_prune(m, PRUNE, c))
        pruned_path = work / f"{name}-pruned.onnx"
        export_onnx(pruned, images[:1], pruned_path)
        note = f"round_to {ctx.facts['round_to']}"
        rows.append(
            Row(f"{name} pruned 30%", "modelpress", seconds, onnx=pruned_path, note=note, reference=rows[-1].name)
        )
    measure(
        rows,
        EVALUATORS["accuracy"],
        [(images, labels)],
        images,
        [batch],
        rounds=2 if quick else 15,
        calls_per_round={batch: 1 if quick else 5},
    )
    for row in rows:
        if row.reference != row.name:
            speedup = (
                next(r for r in rows if r.name == row.reference).results[f"bs{batch}_ms"] / row.results[f"bs{batch}_ms"]
            )
            row.note += f"; {speedup:.2f}× faster than its fp32 at batch {batch}"
    context = {
        "data": f"random images {size}x{size}; the metric column is not meaningful (random weights)",
        "latency": f"batch {batch}; median over rounds in which the rows take turns; ONNX Runtime CPU",
        "threads": rows[0].results["threads"],
    }
    return write_results("pruned-cnns" + ("-quick" if quick else ""), rows, "agreement", out_dir, context)
