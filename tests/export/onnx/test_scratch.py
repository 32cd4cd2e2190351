"""ONNX Runtime's quantizers and shape inference write temporary files into the cwd: not ours."""

import os

import compress
from export.onnx.scratch import own_cwd
from tests.tiny_models import TINY_ARCHS


def test_own_cwd_restores_the_folder_and_removes_what_was_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with own_cwd() as folder:
        open("sym_shape_infer_temp.onnx", "w").close()
    assert os.getcwd() == str(tmp_path) and not os.path.exists(folder)
    assert list(tmp_path.iterdir()) == []


def test_quantizing_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    make_model, make_data = TINY_ARCHS["residual_cnn"]
    variants = [{"scheme": "int8_static", "calibration": {"samples": 8}}, {"scheme": "int8_dynamic"}]
    recipe = {"passes": [{"pass": "quantize", "onnx": variants}], "export": {"baseline": False}}
    result = compress.run(make_model(), recipe, make_data(), out_dir=tmp_path / "out", report=False)
    assert all(a["status"] == "passed" for a in result.artifacts), result.failures
    assert list(cwd.iterdir()) == []
