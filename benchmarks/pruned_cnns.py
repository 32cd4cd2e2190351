"""Suite pruned-cnns: does 30% channel pruning make real CNNs faster in ONNX Runtime?

ResNet-50, MobileNetV2 1.0 and ConvNeXt-tiny built from ``transformers`` configs (random
weights: latency does not depend on them) at 224x224. Per model, two rows: the fp32 baseline
and ``structured_prune`` ratio 0.3 with the pass's defaults, so the suite measures what users
get: ``round_to: auto`` rounds kept widths to multiples of 8 (widths like 11 or 45 fell off
ONNX Runtime's blocked conv kernels and made pruned CNNs slower). The row's note names the
value used. Timed at batch 32 with the rows taking turns; ratios are
against each model's baseline in the JSON.
The metric column means nothing here (random weights, one set of labels for all rows);
latency and size are the figures. ``--quick`` shrinks images to 64x64 and rounds to a smoke run.
"""

import copy
from pathlib import Path

import torch

from benchmarks.harness import Row, measure, timed, write_results
from compress.context import Context
from compress.data import TaskData
from compress.evaluate import EVALUATORS
from compress.passes.structured_prune import StructuredPruneConfig, structured_prune
from export.onnx_export import export_onnx

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


def _build(config_class: str, fields: dict) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    return Logits(transformers.AutoModel.from_config(getattr(transformers, config_class)(**fields))).eval()


def run(out_dir: Path, work: Path, quick: bool = False) -> Path:
    size, batch = (64, 2) if quick else (224, 32)
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    rows = []
    for name, (config_class, fields) in MODELS.items():
        model = _build(config_class, fields)
        with torch.no_grad():
            labels = model(images).argmax(1)
        data = TaskData(eval=[(images, labels)], calibration=[(images, labels)])
        base_path = work / f"{name}.onnx"
        export_onnx(model, images[:1], base_path)
        rows.append(Row(f"{name} fp32", "torch.onnx + onnxruntime", 0.0, onnx=base_path))
        ctx = Context(data, images[:1], copy.deepcopy(model), None)
        pruned, seconds = timed(lambda m=model, c=ctx: structured_prune(m, PRUNE, c))
        pruned_path = work / f"{name}-pruned.onnx"
        export_onnx(pruned, images[:1], pruned_path)
        note = f"round_to {ctx.facts['round_to']}"
        rows.append(Row(f"{name} pruned 30%", "modelpress", seconds, onnx=pruned_path, note=note))
    measure(
        rows,
        EVALUATORS["accuracy"],
        [(images, labels)],
        images,
        [batch],
        rounds=2 if quick else 15,
        calls_per_round={batch: 1 if quick else 5},
    )
    context = {
        "data": f"random images {size}x{size}; the metric column is not meaningful (random weights)",
        "latency": f"batch {batch}; median over rounds in which the rows take turns; ONNX Runtime CPU",
        "threads": rows[0].results["threads"],
    }
    return write_results("pruned-cnns" + ("-quick" if quick else ""), rows, "agreement", out_dir, context)
