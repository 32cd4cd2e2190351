"""RNN classifiers: the RNN (which Torch-Pruning cannot cut: its LSTM pruner asserts on several layers
and indexes out of range on one) is left whole with a line saying so, while the layers around it are cut."""

import pytest
import torch

import compress
from compress.models.data import TaskData
from tests.zoo.torch_models import RnnClassifier


def batch(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 64, (8, 10), generator=generator), torch.randint(0, 3, (8,), generator=generator)


@pytest.mark.parametrize(
    "fields, kind",
    [({}, "LSTM, 2 layers, bidirectional"), ({"rnn": "GRU", "layers": 1, "bidirectional": False}, "GRU, 1 layer")],
    ids=["lstm-2-layers-bidirectional", "gru-1-layer"],
)
def test_an_rnn_classifier_prunes_exports_and_passes_parity(fields, kind, tmp_path):
    torch.manual_seed(0)
    model = RnnClassifier(**fields).eval()
    shapes = {name: tuple(p.shape) for name, p in model.rnn.named_parameters()}
    data = TaskData(eval=[batch(0), batch(1)], train=[batch(2), batch(3)], validation=[batch(9)])
    recipe = {"passes": [{"pass": "structured_prune", "ratio": 0.3}], "export": {"check_providers": []}}
    result = compress.run(model, recipe, data, out_dir=tmp_path / "run", report=False)
    assert {a["name"]: a["status"] for a in result.artifacts} == {"baseline": "passed", "compressed": "passed"}
    assert result.model.hidden.out_features < 32  # the layers around the RNN are cut
    kept = {name: tuple(p.shape) for name, p in result.model.rnn.named_parameters()}
    assert kept == shapes
    said = f"'rnn' ({kind}) left whole: Torch-Pruning cannot cut RNNs"
    assert any(said in warning for warning in result.stages[-1].warnings)
