"""export.exporter: auto tries dynamo, falls back to TorchScript, and says which made the file."""

import numpy as np
import pytest
import torch

from compress.passes.quantize import OnnxQuantSpec
from compress.recipe.schema import ExportSpec
from export.errors import ExportError
from export.onnx.exporter import export_onnx
from export.onnx.runtime import make_session


class DataDependentBranch(torch.nn.Module):
    """torch.export refuses to guard on a tensor's value; TorchScript traces the branch taken."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def test_auto_falls_back_to_torchscript_and_records_why(tmp_path):
    model, x = DataDependentBranch().eval(), torch.ones(2, 4)
    with pytest.raises(ExportError, match="data-dependent"):
        export_onnx(model, x, tmp_path / "dynamo.onnx", exporter="dynamo")
    onnx_model, made_by = export_onnx(model, x, tmp_path / "auto.onnx", exporter="auto")
    assert made_by["exporter"] == "torchscript"
    assert made_by["exporter_fallback"].startswith("dynamo failed: DataDependentBranch could not be exported")
    (out,) = make_session(onnx_model.path).run(None, {onnx_model.input_names[0]: x.numpy()})
    np.testing.assert_allclose(out, model(x).detach().numpy(), atol=1e-6)


def test_auto_keeps_dynamo_where_it_works(tmp_path):
    _, made_by = export_onnx(torch.nn.Linear(4, 3), torch.ones(2, 4), tmp_path / "m.onnx")
    assert made_by == {"exporter": "dynamo"}


def test_every_artifact_defaults_to_auto():
    assert ExportSpec().exporter == "auto"
    assert OnnxQuantSpec().exporter == "auto"
