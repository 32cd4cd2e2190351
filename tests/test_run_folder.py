"""A run folder holds one run: an OS lock against a second process, an in-memory model's identity,
and no artifact or stage left over from an earlier recipe (issues 14 and 15)."""

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
import torch
import yaml

import compress
from compress.core.errors import OutputError
from tests.tiny_models import mlp, vector_data

SLOW_METRIC = """
import os
import time

from compress.models.evaluate import accuracy


def gated_accuracy(predict, batches):
    # Holds the first run inside its locked folder until the test has tried the second one.
    deadline = time.monotonic() + 300
    while not os.path.exists(os.environ["MODELPRESS_TEST_GO"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return accuracy(predict, batches)
"""

QUICK_REPORT = {"batch_sizes": [1], "warmup": 0, "iterations": 2, "max_seconds": 1.0}


def recipe_text(**changes) -> str:
    body = {
        "name": "tiny",
        "model": {"factory": "tests.tiny_models:mlp"},
        "data": {"factory": "tests.tiny_models:vector_data"},
        "passes": [{"pass": "magnitude_prune", "sparsity": 0.5}],
        "export": {"baseline": False},
        "report": QUICK_REPORT,
    }
    return yaml.safe_dump({**body, **changes})


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_processes_on_one_folder_one_is_refused_and_the_folder_is_whole(tmp_path):
    (tmp_path / "gate.py").write_text(SLOW_METRIC)
    (tmp_path / "recipe.yaml").write_text(recipe_text(task={"metric": "gate:gated_accuracy"}))
    out, go = tmp_path / "out", tmp_path / "go"
    env = {**os.environ, "MODELPRESS_TEST_GO": str(go)}
    command = [sys.executable, "-m", "compress.cli", "run", str(tmp_path / "recipe.yaml"), "--out", str(out)]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = out / ".modelpress.lock"
        deadline = time.monotonic() + 240  # generous: only bounds a broken run, never measures speed
        while not (lock.is_file() and lock.read_text() == str(first.pid)) and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()
            time.sleep(0.1)
        second = subprocess.run(command + ["--force"], env=env, capture_output=True, text=True, timeout=240)
        assert second.returncode == 2, second.stderr
        assert f"another modelpress run is using this folder (pid {first.pid})" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        go.touch()
        stdout, stderr = first.communicate(timeout=240)
    assert first.returncode == 0, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifacts"]
    for path, digest in manifest["artifacts"].items():
        assert sha256(out / path) == digest, path


def test_a_lock_is_released_when_its_process_dies(tmp_path):
    from compress.engine import folder

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)",
            str(out / folder.LOCK),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match="another modelpress run"):
            folder.lock(out)
    finally:
        holder.kill()
        holder.wait()
    folder.lock(out)  # the OS released the dead holder's lock
    folder.unlock(out)


def test_two_in_memory_models_never_share_a_folder(tmp_path):
    recipe = {"passes": [{"pass": "magnitude_prune", "sparsity": 0.5}], "export": {"enabled": False}}
    compress.run(mlp(), recipe, vector_data(), out_dir=tmp_path)
    other = mlp()  # the same structure, other initial weights: another model
    with torch.no_grad():
        other.fc1.weight.mul_(-1)
    with pytest.raises(OutputError, match="holds a run of recipe 'run' with other inputs"):
        compress.run(other, recipe, vector_data(), out_dir=tmp_path)
    again = compress.run(mlp(), recipe, vector_data(), out_dir=tmp_path)  # the same model resumes
    assert again.stages[-1].resumed
    fresh = compress.run(other, recipe, vector_data(), out_dir=tmp_path, force=True)
    assert not fresh.stages[-1].resumed  # started clean


def test_rerun_without_the_quantize_pass_leaves_no_int8_artifact(tmp_path):
    quantize = {"pass": "quantize", "onnx": [{"scheme": "int8_dynamic"}]}
    recipe = {"passes": [{"pass": "magnitude_prune", "sparsity": 0.5}, quantize], "report": QUICK_REPORT}
    first = compress.run(mlp(), recipe, vector_data(), out_dir=tmp_path)
    assert {a["name"] for a in first.artifacts} == {"baseline", "compressed", "compressed-int8_dynamic"}
    recipe["passes"] = recipe["passes"][:1]
    second = compress.run(mlp(), recipe, vector_data(), out_dir=tmp_path)
    assert {a["name"] for a in second.artifacts} == {"baseline", "compressed"}
    report = json.loads((tmp_path / "report.json").read_text())
    assert "int8" not in json.dumps(report["artifacts"])
    assert not list((tmp_path / "artifacts").glob("*int8*"))
    assert [s.name for s in second.stages] == ["baseline", "magnitude_prune"]
    listed = json.loads((tmp_path / "run.json").read_text())["files"]
    assert not any("int8" in f for f in listed)


HANG_IN_QUANTIZE = """
import glob
import os
import pathlib
import time

from compress.models.evaluate import accuracy


def hang_in_quantize(predict, batches):
    # Blocks once quantization's temporary folder exists, so the test can send SIGTERM there.
    if glob.glob(os.path.join(os.environ["TMPDIR"], "modelpress-quant-*")):
        pathlib.Path(os.environ["MODELPRESS_TEST_WAITING"]).touch()
        time.sleep(300)
    return accuracy(predict, batches)
"""


def test_sigterm_during_quantization_removes_temporary_folders(tmp_path):
    import signal

    scratch, waiting = tmp_path / "tmp", tmp_path / "waiting"
    scratch.mkdir()
    (tmp_path / "gate.py").write_text(HANG_IN_QUANTIZE)
    quantize = {"pass": "quantize", "onnx": [{"scheme": "int8_dynamic", "max_metric_drop": 0.5}]}
    (tmp_path / "recipe.yaml").write_text(recipe_text(task={"metric": "gate:hang_in_quantize"}, passes=[quantize]))
    env = {**os.environ, "TMPDIR": str(scratch), "MODELPRESS_TEST_WAITING": str(waiting)}
    command = [sys.executable, "-m", "compress.cli", "run", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "o")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240  # generous: only bounds a broken run, never measures speed
    while not waiting.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert waiting.exists(), process.communicate(timeout=60)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert list(scratch.glob("modelpress-*")) == []  # torch's own caches may stay; ours do not
