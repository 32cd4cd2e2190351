"""Smoke mode of the int4-algos suite: one row per shipped algorithm, each scored, timed and recorded."""

import json
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks.minilm_sts import _stsb_path
from export.quantize import int4_algorithms

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]


def test_quick_suite_writes_a_row_per_algorithm(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if not Path(_stsb_path(), "sts-dev.csv").is_file():
        pytest.skip(f"STS-B not found at {_stsb_path()} (set MODELPRESS_STSB)")
    assert main(["int4-algos", "--quick", "--out", str(tmp_path)]) == 0
    body = json.loads((tmp_path / "int4-algos-quick.json").read_text())
    rows = {row["name"]: row for row in body["rows"]}
    assert list(rows) == ["fp32 (ONNX)", *(f"int4-{name}" for name in int4_algorithms.available())]
    fp32 = rows["fp32 (ONNX)"]
    for name, row in rows.items():
        assert row["bs1_ms"] > 0 and row["bs32_ms"] > 0
        assert abs(row["metric"] - fp32["metric"]) < 3.0, name
        if name != "fp32 (ONNX)":
            assert row["size_bytes"] <= 0.16 * fp32["size_bytes"], name  # matmuls and the word table in 4 bits
            assert f"MatMul by {name.removeprefix('int4-')}, Gather by default" in row["note"]
    assert "calibrated on 32 rows" in rows["int4-gptq"]["note"]  # quick mode: one calibration batch
    assert "load per core" in (tmp_path / "int4-algos-quick.md").read_text()
