"""torch -> ONNX: fp32 parity in ONNX Runtime, dynamic axes, stable names, op counts."""

from collections import Counter

import onnx
import pytest
import torch

from compress.models.data import call_model, first_tensor, take_rows
from export.errors import ExportError
from export.onnx.exporter import to_onnx
from export.onnx.runtime import make_session, ort_predictor
from tests.tiny_models import TINY_ARCHS
from tests.tolerances import FP32_EXPORT_ATOL


def op_counts(path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("arch", list(TINY_ARCHS))
def test_export_matches_torch_at_other_batch_sizes(arch, tmp_path):
    factory, data_factory = TINY_ARCHS[arch]
    model, batch = factory(), data_factory().eval[0][0]
    exported = to_onnx(model, take_rows(batch, 2), tmp_path / "m.onnx")
    predict = ort_predictor(make_session(exported.path))
    for rows in (1, 5):
        inputs = take_rows(batch, rows)
        with torch.no_grad():
            expected = first_tensor(call_model(model, inputs))
        torch.testing.assert_close(predict(inputs), expected, atol=FP32_EXPORT_ATOL[arch], rtol=0)


def test_input_and_output_names_are_stable(tmp_path):
    model, batch = TINY_ARCHS["tiny_transformer"][0](), TINY_ARCHS["tiny_transformer"][1]().eval[0][0]
    exported = to_onnx(model, batch, tmp_path / "m.onnx", output_name="logits")
    session = make_session(exported.path)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"] == exported.input_names
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert session.get_inputs()[0].shape == ["batch", "sequence"]


def test_sequence_axis_is_dynamic_for_token_inputs(tmp_path):
    model = TINY_ARCHS["tiny_transformer"][0]()
    exported = to_onnx(model, TINY_ARCHS["tiny_transformer"][1]().eval[0][0], tmp_path / "m.onnx")
    longer = {"input_ids": torch.randint(0, 50, (3, 11)), "attention_mask": torch.ones(3, 11, dtype=torch.long)}
    with torch.no_grad():
        expected = model(**longer)
    torch.testing.assert_close(ort_predictor(make_session(exported.path))(longer), expected, atol=1e-4, rtol=0)


class SourceTarget(torch.nn.Module):
    """Two token inputs of different lengths, as an encoder-decoder takes: each keeps its own."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 4)

    def forward(self, input_ids, decoder_input_ids):
        return self.embed(decoder_input_ids) + self.embed(input_ids).mean(1, keepdim=True)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_token_inputs_of_different_lengths_get_their_own_axes(exporter, tmp_path):
    model, ids = SourceTarget(), torch.randint(0, 50, (2, 8))
    exported = to_onnx(
        model, {"input_ids": ids, "decoder_input_ids": ids[:, :4]}, tmp_path / "m.onnx", exporter=exporter
    )
    session = make_session(exported.path)
    assert [i.shape for i in session.get_inputs()] == [["batch", "sequence"], ["batch", "sequence_1"]]
    other = {"input_ids": torch.randint(0, 50, (3, 5)), "decoder_input_ids": torch.randint(0, 50, (3, 7))}
    with torch.no_grad():
        expected = model(**other)
    torch.testing.assert_close(ort_predictor(session)(other), expected, atol=1e-5, rtol=0)


def test_graph_structure_op_counts(tmp_path):
    mlp = to_onnx(TINY_ARCHS["mlp"][0](), torch.randn(2, 12), tmp_path / "mlp.onnx")
    counts = op_counts(mlp.path)
    assert counts["Gemm"] + counts["MatMul"] == 2
    assert counts["Relu"] == 1
    cnn = to_onnx(TINY_ARCHS["residual_cnn"][0](), torch.randn(2, 1, 8, 8), tmp_path / "cnn.onnx")
    assert op_counts(cnn.path)["Conv"] == 2


def test_static_batch_when_dynamic_batch_is_off(tmp_path):
    exported = to_onnx(TINY_ARCHS["mlp"][0](), torch.randn(3, 12), tmp_path / "m.onnx", dynamic_batch=False)
    assert make_session(exported.path).get_inputs()[0].shape == [3, 12]


class Eigenvalues(torch.nn.Module):
    def forward(self, x):
        return torch.linalg.eigvals(x @ x.T).real


def test_unexportable_op_is_named_and_leaves_no_file(tmp_path):
    with pytest.raises(
        ExportError, match=r"Eigenvalues could not be exported to ONNX \(opset 18\): .*aten\.linalg_eig"
    ):
        to_onnx(Eigenvalues(), torch.randn(3, 3), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_fixed_shapes_run_any_number_of_rows_in_chunks(tmp_path):
    model = TINY_ARCHS["mlp"][0]()
    exported = to_onnx(model, torch.randn(4, 12), tmp_path / "m.onnx", dynamic_batch=False)
    inputs = torch.randn(10, 12)  # two full chunks of 4 and one padded chunk of 2
    with torch.no_grad():
        expected = model(inputs)
    actual = ort_predictor(make_session(exported.path))(inputs)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=FP32_EXPORT_ATOL["mlp"], rtol=0)


def test_external_data_keeps_the_weights_beside_the_graph(tmp_path):
    model = TINY_ARCHS["mlp"][0]()
    path = tmp_path / "m.onnx"
    to_onnx(model, torch.randn(2, 12), path, external_data="always")
    data = tmp_path / "m.onnx.data"
    assert data.is_file() and data.stat().st_size >= 12 * 4 * 16  # the first weight matrix at least
    graph = onnx.load(str(path), load_external_data=False)
    external = [t.name for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert "model.fc1.weight" in external
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]  # no temporary file left
    inputs = torch.randn(3, 12)
    with torch.no_grad():
        expected = model(inputs)
    torch.testing.assert_close(
        ort_predictor(make_session(path))(inputs), expected, atol=FP32_EXPORT_ATOL["mlp"], rtol=0
    )


def test_opset_14_is_written_and_recorded_as_14(tmp_path):
    from export.runfolder.artifacts import graph_facts
    from tests.tiny_models import mlp

    exported = to_onnx(mlp(), torch.randn(2, 12), tmp_path / "m.onnx", opset=14)
    facts = graph_facts(exported.path)
    assert exported.opset == facts["opset"] == 14
    assert {(o.domain, o.version) for o in onnx.load(str(exported.path)).opset_import} == {("", 14)}
    assert facts["input_names"] == ["input"] and facts["output_names"] == ["output"]
    assert facts["input_shapes"] == {"input": ["batch", 12]} and facts["output_shapes"] == {"output": ["batch", 4]}
    assert facts["op_counts"] == dict(sorted(op_counts(exported.path).items()))
    assert facts["initializer_dtypes"] == {"float32": 4}


def test_an_opset_the_exporter_cannot_honour_is_refused(tmp_path, monkeypatch):
    import export.onnx.exporter as onnx_export

    # The dynamo exporter keeps opset 18 where it cannot convert down; stand in for that case.
    monkeypatch.setattr(onnx_export, "file_opset", lambda path: 18)
    from tests.tiny_models import mlp

    with pytest.raises(ExportError, match=r"export.opset 14 cannot be honoured: the exporter wrote opset 18"):
        to_onnx(mlp(), torch.randn(2, 12), tmp_path / "m.onnx", opset=14)
    assert not (tmp_path / "m.onnx").exists()


def test_a_decoder_that_returns_its_cache_exports_one_forward_pass_without_it(tmp_path):
    """Hub configs have use_cache on: the model returns a DynamicCache beside its logits. One forward
    pass (a scorer, a classifier) needs none of it, so the file holds the logits only."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2
    )
    config.vocab_size = 64
    assert config.use_cache  # the default the Hub ships
    model = LlamaForCausalLM(config).eval()
    inputs = {"input_ids": torch.randint(0, 64, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    exported = to_onnx(model, inputs, tmp_path / "m.onnx", output_name="logits")
    session = make_session(exported.path)
    assert [o.name for o in session.get_outputs()] == ["logits"]
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.testing.assert_close(ort_predictor(session)(inputs), expected, atol=1e-4, rtol=0)
