"""Progress (issue 31): bars only on a terminal and never under -q; piped output gets no bar and no
terminal control sequence. The demo's bars on a terminal are checked on the demo run the end-to-end
tests share (tests/test_end_to_end.py); here a tiny recipe with a bar in every kind of step."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.terminal import BAR, ESCAPE, run_on_terminal

ROOT = Path(__file__).resolve().parents[3]
RECIPE = {
    "name": "bars",
    "model": {"factory": "tests.tiny_models:mlp"},
    "data": {"factory": "tests.tiny_models:vector_data"},
    "passes": [
        {"pass": "distill", "epochs": 1},
        {"pass": "quantize", "onnx": [{"scheme": "int8_static", "exporter": "torchscript"}]},
    ],
    "export": {"exporter": "torchscript", "baseline": False},
    "report": {"batch_sizes": [1], "warmup": 1, "iterations": 3, "max_seconds": 0.5},
}


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


def _command(recipe, *flags) -> list[str]:
    return [sys.executable, "-m", "compress.cli", "run", str(recipe), "--out", str(recipe.parent / "run"), *flags]


def _env(tmp_path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MODELPRESS_CACHE": str(tmp_path / "cache")}


def test_quiet_on_a_terminal_draws_no_bar(recipe, tmp_path):
    done = run_on_terminal(_command(recipe, "-q"), _env(tmp_path), timeout=600)
    assert done.returncode == 0, done.stderr
    assert BAR not in done.stderr and "exporting" not in done.stderr and "stage 1/2" not in done.stderr


def test_piped_output_has_lines_but_no_bar(recipe, tmp_path):
    done = subprocess.run(_command(recipe), env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "stage 1/2: distill" in done.stderr  # the plain lines stay
    assert BAR not in done.stderr and ESCAPE not in done.stderr and "exporting" not in done.stderr
