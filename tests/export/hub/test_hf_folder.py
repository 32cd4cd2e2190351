"""A cut no Hugging Face config describes gets no folder, in one line (issue 31); a uniform cut does."""

import pytest
import torch

from export.errors import ExportError
from export.hub.hf_folder import write_hf_folder
from tests.tiny_models import mlp, tiny_minilm


def _narrow_ffn(model, layer: int, width: int) -> None:
    block = model.encoder.encoder.layer[layer]
    up, down = block.intermediate.dense, block.output.dense
    block.intermediate.dense = torch.nn.Linear(up.in_features, width)
    block.output.dense = torch.nn.Linear(width, down.out_features)


def _inputs():
    return {"input_ids": torch.tensor([[2, 7, 9, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}


def test_different_ffn_widths_per_layer_are_refused_in_one_line(tmp_path):
    model = tiny_minilm(30)
    _narrow_ffn(model, 0, 32)  # layer 1 keeps 64
    with pytest.raises(ExportError, match=r"^different FFN widths per layer \(\[32, 64\]\), which a Hugging Face"):
        write_hf_folder(model, tmp_path / "hf", _inputs())
    assert not (tmp_path / "hf").exists()


def test_a_uniform_ffn_cut_is_written_with_its_width(tmp_path):
    model = tiny_minilm(30)
    for layer in (0, 1):
        _narrow_ffn(model, layer, 32)
    model.encoder.config.intermediate_size = 32  # as structured_prune's update_hf_config leaves it
    made = write_hf_folder(model, tmp_path / "hf", _inputs())
    assert made.architecture == "BertModel" and made.max_abs <= 1e-5 and made.notes[-1].startswith("no tokenizer")
    assert '"intermediate_size": 32' in (tmp_path / "hf" / "config.json").read_text()


def test_a_model_that_is_no_transformers_model_is_said_so(tmp_path):
    with pytest.raises(ExportError, match="not a transformers model"):
        write_hf_folder(mlp(), tmp_path / "hf", {"x": torch.zeros(1, 12)})
