"""Smoke mode of the minilm-sts suite: every row builds, scores and is timed; the report is written."""

import json
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks.minilm_sts import _stsb_path

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]


def test_quick_suite_writes_every_row_with_real_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if not Path(_stsb_path(), "sts-dev.csv").is_file():
        pytest.skip(f"STS-B not found at {_stsb_path()} (set MODELPRESS_STSB)")
    assert main(["minilm-sts", "--quick", "--out", str(tmp_path)]) == 0
    body = json.loads((tmp_path / "minilm-sts-quick.json").read_text())
    rows = {row["name"]: row for row in body["rows"]}
    assert len(rows) == 11 and list(rows)[0] == "fp32 (ONNX)"
    fp32 = rows["fp32 (ONNX)"]
    assert fp32["metric"] > 60.0  # the first of all-MiniLM-L6-v2's 6 blocks, first 128 STS-B dev pairs (6 blocks: 87)
    for row in rows.values():
        assert row["bs1_ms"] > 0 and row["bs32_ms"] > 0 and row["threads"] >= 1
        # prune + distill rows: 32 distillation steps on 1 block recover most, not all
        bound = 5.0 if "prune" in row["name"] else 3.0
        assert abs(row["metric"] - fp32["metric"]) < bound, row["name"]
    assert rows["modelpress int8"]["size_bytes"] <= 0.26 * fp32["size_bytes"]
    assert rows["modelpress int4"]["size_bytes"] <= 0.16 * fp32["size_bytes"]
    assert rows["ORT MatMulNBits 4-bit (defaults)"]["size_bytes"] > 0.5 * fp32["size_bytes"]  # embeddings left fp32
    pruned, pruned_e4 = rows["modelpress prune + distill + int8"], rows["modelpress prune + distill + int8-e4"]
    assert pruned["size_bytes"] < rows["modelpress int8"]["size_bytes"]  # fewer heads and FFN neurons
    assert pruned_e4["size_bytes"] < 0.75 * pruned["size_bytes"]  # the word table in int4 blocks
    markdown = (tmp_path / "minilm-sts-quick.md").read_text()
    assert "| modelpress int4 | modelpress |" in markdown and "(1.00×)" in markdown
