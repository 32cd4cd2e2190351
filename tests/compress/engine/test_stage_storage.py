"""A run folder stores each distinct file once (issue 32, item 6): a stage whose pass changed no weight is a
hard link to the earlier stage's weights, and artifacts of equal bytes (the baseline and compressed files of a
recipe that changed nothing, their reference outputs) share one file."""

import hashlib
import os

import yaml

import compress

QUICK_REPORT = {"batch_sizes": [1], "warmup": 0, "iterations": 2, "max_seconds": 0.5}


def test_the_folder_holds_each_distinct_file_once(tmp_path):
    recipe = {
        "name": "lean",
        "model": {"factory": "tests.tiny_models:mlp"},
        "data": {"factory": "tests.tiny_models:vector_data"},
        # Two passes that change no torch weight (ONNX-side quantization): the stages and the fp32 files equal
        # the model as it came.
        "passes": [
            {"pass": "quantize", "onnx": [{"scheme": "int8_dynamic", "exporter": "torchscript"}]},
            {"pass": "quantize", "onnx": []},
        ],
        "export": {"exporter": "torchscript"},
        "report": QUICK_REPORT,
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    compress.run_recipe(tmp_path / "recipe.yaml", out)
    stages, artifacts = out / "stages", out / "artifacts"
    assert (stages / "02-quantize-2" / "model.safetensors").samefile(stages / "01-quantize" / "model.safetensors")
    assert (artifacts / "compressed.onnx").samefile(artifacts / "baseline.onnx")
    assert (artifacts / "compressed.reference.npz").samefile(artifacts / "baseline.reference.npz")
    # Bytes on disk (each inode once) against the sum of the distinct contents: equal, far under 1.5x.
    files = [path for path in out.rglob("*") if path.is_file()]
    on_disk = {os.stat(path).st_ino: path.stat().st_size for path in files}
    distinct = {hashlib.sha256(path.read_bytes()).hexdigest(): path.stat().st_size for path in files}
    assert sum(on_disk.values()) == sum(distinct.values())
    assert len(files) - len(on_disk) >= 3  # the three links above
    assert all(os.stat(path).st_nlink <= 2 for path in files)  # linked inside the run folder only
