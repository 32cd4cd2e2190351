"""Smoke mode of the qat-digits suite: fp32, int8 static and QAT rows per model, scored in ONNX Runtime."""

import json

import pytest

from benchmarks.__main__ import main

pytestmark = pytest.mark.slow


def test_quick_suite_writes_the_three_rows_with_parity(tmp_path):
    assert main(["qat-digits", "--quick", "--out", str(tmp_path)]) == 0
    body = json.loads((tmp_path / "qat-digits-quick.json").read_text())
    assert len(body["models"]) == 2
    rows = {row["name"]: row for row in body["models"]["DigitsSeparableCNN"]}
    assert list(rows) == ["fp32 (ONNX)", "int8 static (PTQ)", "int8 QAT", "int8 QAT, learned ranges"]
    assert rows["fp32 (ONNX)"]["points_vs_fp32"] == 0.0
    qat = rows["int8 QAT"]
    assert qat["status"] == "passed" and qat["parity"]["passed"]
    assert qat["parity"]["reference"] == "fake-quant torch model"
    assert qat["op_counts"]["QuantizeLinear"] > 0 and "BatchNormalization" not in qat["op_counts"]
    assert "| int8 QAT |" in (tmp_path / "qat-digits-quick.md").read_text()
