"""Smoke mode of the digits-cnn suite: every row is a real run of the demo recipe's passes, scored
and timed, and the report is written with ratios against fp32."""

import json

import pytest

from benchmarks.__main__ import main

pytestmark = pytest.mark.slow


def test_quick_suite_writes_every_row_with_real_figures(tmp_path):
    assert main(["digits-cnn", "--quick", "--out", str(tmp_path)]) == 0
    body = json.loads((tmp_path / "digits-cnn-quick.json").read_text())
    rows = {row["name"]: row for row in body["rows"]}
    assert list(rows) == [
        "fp32 (ONNX)",
        "structured prune",
        "prune + distill",
        "int8 static",
        "full recipe (prune + distill + int8)",
    ]
    fp32 = rows["fp32 (ONNX)"]
    assert fp32["metric"] >= 0.97
    for row in rows.values():
        assert row["bs1_ms"] > 0 and row["bs32_ms"] > 0
    # Half the channels of every group: about a quarter of the weights; int8 a quarter of the bytes.
    assert rows["structured prune"]["size_bytes"] <= 0.3 * fp32["size_bytes"]
    assert rows["int8 static"]["size_bytes"] <= 0.3 * fp32["size_bytes"]
    assert rows["full recipe (prune + distill + int8)"]["size_bytes"] <= 0.1 * fp32["size_bytes"]
    assert rows["int8 static"]["metric"] >= fp32["metric"] - 0.005  # the recipe's budget
    # Even one epoch of distillation recovers most of what pruning alone lost.
    assert rows["prune + distill"]["metric"] > rows["structured prune"]["metric"] + 0.3
    assert "| full recipe (prune + distill + int8) | modelpress |" in (tmp_path / "digits-cnn-quick.md").read_text()
