"""RNN classifiers: the RNN (which Torch-Pruning cannot cut: its LSTM pruner asserts on several layers
and indexes out of range on one) is left whole with a line saying so, while the layers around it are cut."""

import pytest
import torch

import compress
from compress.models.data import TaskData


class RnnClassifier(torch.nn.Module):
    def __init__(self, rnn: torch.nn.RNNBase, width: int):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.rnn = rnn
        self.hidden = torch.nn.Linear(width, 32)
        self.head = torch.nn.Linear(32, 3)

    def forward(self, input_ids):
        out, _ = self.rnn(self.embed(input_ids))
        return self.head(torch.relu(self.hidden(out[:, -1])))


def batch(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (8, 10), generator=generator), torch.randint(0, 3, (8,), generator=generator)


@pytest.mark.parametrize(
    "rnn, width, kind",
    [
        (
            lambda: torch.nn.LSTM(16, 32, num_layers=2, bidirectional=True, batch_first=True),
            64,
            "LSTM, 2 layers, bidirectional",
        ),
        (lambda: torch.nn.GRU(16, 32, num_layers=1, batch_first=True), 32, "GRU, 1 layer"),
    ],
    ids=["lstm-2-layers-bidirectional", "gru-1-layer"],
)
def test_an_rnn_classifier_prunes_exports_and_passes_parity(rnn, width, kind, tmp_path):
    torch.manual_seed(0)
    model = RnnClassifier(rnn(), width).eval()
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
