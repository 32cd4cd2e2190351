"""SIGKILL in the middle of a run, then rerun: it resumes after the last completed stage and ends
with the same artifacts, byte for byte, as a run that was never interrupted."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = """
name: kill-resume
seed: 3
model: {factory: "tests.tiny_models:residual_cnn"}
data: {factory: "tests.tiny_models:image_data"}
passes:
  - {pass: structured_prune, ratio: 0.5, round_to: 1}   # 8 channels: a real cut needs exact widths
  - {pass: distill, epochs: 400, lr: 1.0e-3}
report: {batch_sizes: [1], warmup: 1, iterations: 5, max_seconds: 0.5}
"""

pytestmark = pytest.mark.slow


def start(recipe: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "compress.cli", "run", str(recipe), "--out", str(out)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "artifacts").glob("*.onnx"))}


def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    killed = tmp_path / "killed"
    process = start(recipe, killed)
    deadline = time.monotonic() + 120
    while not list(killed.glob("stages/01-*/stage.json")):  # stage 1 done: kill during stage 2
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "stage 1 did not complete in 120 s"
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not list(killed.glob("stages/02-*/stage.json")) and not (killed / "report.json").exists()

    rerun = start(recipe, killed)
    _, rerun_log = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, rerun_log[-2000:]
    assert "resumed structured_prune" in rerun_log

    clean = start(recipe, tmp_path / "clean")
    _, clean_log = clean.communicate(timeout=300)
    assert clean.returncode == 0, clean_log[-2000:]
    assert digests(killed) == digests(tmp_path / "clean")
    assert set(digests(killed)) == {"baseline.onnx", "compressed.onnx"}
