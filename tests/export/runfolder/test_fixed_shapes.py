"""Fixed input shapes end to end (issue 32, items 1 and 2): with ``export.dynamic_batch: false`` every step
that feeds an artifact feeds batches of its fixed size (parity, metric, timing, provider check, calibration),
and int4 packs the Linear layers ONNX Runtime's pre-processing fused into Gemm; the record lists exactly
the nodes left float, each with its reason."""

import json

import onnx
import pytest
import yaml
from torch import nn

from compress.cli import main
from tests.tiny_models import seeded

# TorchScript exports these tiny models in a fraction of dynamo's time; the exporter is not under test.
TORCHSCRIPT = {"exporter": "torchscript"}
QUICK_REPORT = {"batch_sizes": [1], "warmup": 0, "iterations": 2, "max_seconds": 0.5}


class HeadCNN(nn.Module):
    """A conv stem under a two-layer FFN head: at batch 1 both Linear layers become Gemm."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x):
        return self.head(self.stem(x))


head_cnn = seeded(HeadCNN)
CASES = {
    "cnn": ("tests.export.runfolder.test_fixed_shapes:head_cnn", "tests.tiny_models:image_data", "int8_static"),
    "minilm": ("tests.tiny_models:tiny_bert", "tests.tiny_models:token_data", "int8_dynamic"),
}


def _ffn_nodes(graph) -> list[str]:
    """The Linear layers of the fp32 file: MatMul or Gemm over a weight initializer."""
    weights = {init.name for init in graph.initializer}
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixed_shapes_run_and_report_with_int4_smaller_than_int8(tmp_path, monkeypatch, case):
    monkeypatch.setattr("export.measure.benchmark.ROUNDS", 2)  # timing is not under test: the fewest turns
    factory, data, int8 = CASES[case]
    recipe = {
        "name": f"fixed-{case}",
        "model": {"factory": factory},
        "data": {"factory": data},
        "passes": [
            {
                "pass": "quantize",
                "onnx": [
                    {"scheme": int8, "name": "int8", "calibration": {"samples": 8}, **TORCHSCRIPT},
                    {"scheme": "int4", "name": "int4", "block_size": 16, "opset": 21},
                ],
            }
        ],
        "export": {"dynamic_batch": False, "fixed_batch_size": 1, "baseline": False, **TORCHSCRIPT},
        "report": QUICK_REPORT,
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "recipe.yaml"), "--out", str(out), "-q"]) == 0
    assert main(["report", str(out), "--trust-run", "-q"]) == 0
    records = {a["name"]: a for a in json.loads((out / "report.json").read_text())["artifacts"]}
    assert all(r["status"] == "passed" for r in records.values())
    int4 = records["int4"]
    # Every step ran at the file's one batch size: timing, and the provider check (CPU, every node).
    assert int4["input_shapes"][next(iter(int4["input_shapes"]))][0] == 1
    assert {e["batch_size"] for e in int4["latency"]} == {1}
    assert [s["supported"] for s in int4["provider_support"] if s["checked"]] == [True]
    # No FFN layer float, none left as Gemm; int4 is the smaller file.
    assert int4["size_bytes"] < records["int8"]["size_bytes"]
    graph = onnx.load(str(out / int4["path"])).graph
    assert "Gemm" not in int4["op_counts"] and not _ffn_nodes(graph)
    fp32 = onnx.load(str(out / records["compressed"]["path"])).graph
    assert int4["op_counts"]["com.microsoft::MatMulNBits"] == len(_ffn_nodes(fp32))
    # The float list is exact: the convolutions (int4 packs MatMul and Gather), nothing else.
    convs = sorted(n.name for n in graph.node if n.op_type == "Conv")
    assert sorted(int4["float_nodes"]) == convs == sorted(int4["float_reasons"])
    assert set(int4["float_reasons"].values()) <= {"int4 does not quantize Conv"}
    assert records["int8"]["float_nodes"] == []
