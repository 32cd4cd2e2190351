"""Weight-only MatMulNBits quantization of an exported decoder-with-past: what is packed at which
width and why, that the files are smaller and run in ONNX Runtime, and their perplexity, teacher-forced
top-1 and greedy agreement against fp32 on a tiny seeded Llama (random weights: the floors below are
what such a model honestly keeps, the point is that the pipeline measures them)."""

import onnx
import pytest

from compress.core.errors import InputError
from export.decoder import export_decoder
from export.decoder.parity import onnx_session
from export.decoder.perplexity import greedy_agreement, greedy_tokens, language_scores, onnx_logits, torch_logits
from export.errors import ExportError
from export.quantize.decoder import DecoderQuantSpec, find_weights, quantize_decoder
from tests.export.decoder.wide_llama import prompts, text_batches, wide_llama

NEW_TOKENS = 12
BLOCK_MATMULS = 7  # q, k, v, o, gate, up, down


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    model = wide_llama()
    folder = tmp_path_factory.mktemp("wide_llama")
    decoder = export_decoder(model, folder / "fp32.onnx")
    ids, mask = prompts()
    return model, decoder, folder, greedy_tokens(model, ids, mask, NEW_TOKENS)


def _quantized(fp32, name: str, spec: DecoderQuantSpec):
    _, decoder, folder, _ = fp32
    record = quantize_decoder(decoder.path, folder / f"{name}.onnx", spec)
    return record, onnx_session(record.path)


def _greedy(fp32, session) -> float:
    ids, mask = prompts()
    return greedy_agreement(greedy_tokens(session, ids, mask, NEW_TOKENS), fp32[3])


def test_int4_is_smaller_runs_and_is_measured(fp32):
    model, decoder, _, _ = fp32
    record, session = _quantized(fp32, "int4", DecoderQuantSpec(block_size=32, accuracy_level=4))

    assert {d.precision for d in record.decisions} == {"int4"}
    roles = [d.role for d in record.decisions]
    assert roles.count("block 0") == roles.count("block 1") == BLOCK_MATMULS
    assert roles.count("lm_head") == roles.count("embedding") == 1
    ops = [n.op_type for n in onnx.load(record.path).graph.node]
    assert ops.count("MatMulNBits") == 2 * BLOCK_MATMULS + 1 and ops.count("GatherBlockQuantized") == 1
    assert record.size_bytes < 0.3 * record.source_bytes  # 4-bit weights, fp16-free scales: ~0.22x measured

    fp32_session = onnx_session(decoder.path)
    candidates = {"torch": torch_logits(model), "fp32": onnx_logits(fp32_session), "int4": onnx_logits(session)}
    scores = language_scores(candidates, text_batches(), reference="torch")
    assert scores["fp32"].top1_agreement == 1.0
    assert abs(scores["fp32"].perplexity / scores["torch"].perplexity - 1) < 1e-5
    assert scores["int4"].tokens == 174  # 2 batches x 4 rows x 23 pairs, less the padded row's 5
    assert 0.4 <= scores["int4"].top1_agreement < 1.0  # measured 0.62 (chance: 1/256)
    assert abs(scores["int4"].perplexity / scores["torch"].perplexity - 1) < 0.05  # measured +3.3%
    assert _greedy(fp32, fp32_session) == 1.0
    assert 0.0 <= _greedy(fp32, session) < 1.0  # measured 0.04: one early flip ends a random model's run


def test_int8_and_mixed_precision_keep_more(fp32):
    int4, int4_session = _quantized(fp32, "int4", DecoderQuantSpec())
    int8, int8_session = _quantized(fp32, "int8", DecoderQuantSpec(bits=8))
    mixed, mixed_session = _quantized(
        fp32, "mixed", DecoderQuantSpec(block_precision={0: "int8", -1: "float"}, lm_head="float")
    )

    embedding = next(d for d in int8.decisions if d.role == "embedding")
    assert embedding.precision == "float" and "4 bits only" in embedding.reason
    assert {d.precision for d in int8.decisions if d.role != "embedding"} == {"int8"}
    by_role = {(d.role, d.precision) for d in mixed.decisions}
    assert by_role == {("block 0", "int8"), ("block 1", "float"), ("lm_head", "float"), ("embedding", "int4")}
    assert next(d for d in mixed.decisions if d.role == "block 1").reason == "block_precision[1] = float"
    assert int4.size_bytes < int8.size_bytes < mixed.size_bytes < int4.source_bytes

    model = fp32[0]
    candidates = {"torch": torch_logits(model)}
    candidates |= {
        name: onnx_logits(s) for name, s in (("int4", int4_session), ("int8", int8_session), ("mixed", mixed_session))
    }
    scores = language_scores(candidates, text_batches(), reference="torch")
    assert scores["int8"].top1_agreement >= 0.9  # measured 0.96
    assert scores["mixed"].top1_agreement > scores["int4"].top1_agreement
    assert _greedy(fp32, int8_session) > _greedy(fp32, int4_session)


def test_algorithms_and_excluded_nodes(fp32):
    _, decoder, _, _ = fp32
    first = find_weights(onnx.load(decoder.path)).blocks[0][0]
    record, session = _quantized(fp32, "rtn", DecoderQuantSpec(algorithm="rtn", nodes_to_exclude=(first,)))
    excluded = next(d for d in record.decisions if d.node == first)
    assert (excluded.precision, excluded.reason) == ("float", "nodes_to_exclude")
    assert sum(d.precision == "int4" for d in record.decisions) == 2 * BLOCK_MATMULS + 1  # the table by default
    k_quant, _ = _quantized(fp32, "k_quant", DecoderQuantSpec(algorithm="k_quant", symmetric=False, embedding="float"))
    assert next(d for d in k_quant.decisions if d.role == "embedding").reason == "embedding = float"

    with pytest.raises(InputError, match="no weight node 'gate_proj/MatMul'"):
        _quantized(fp32, "bad", DecoderQuantSpec(nodes_to_exclude=(first, "gate_proj/MatMul")))
    with pytest.raises(ExportError, match="only the 'default' quantizer"):
        _quantized(fp32, "bad", DecoderQuantSpec(bits=8, algorithm="rtn"))
    with pytest.raises(InputError, match="always writes zero points"):
        _quantized(fp32, "bad", DecoderQuantSpec(algorithm="k_quant", symmetric=True))


def test_a_tied_lm_head_is_found_and_packed_on_its_own(fp32, tmp_path):
    _, decoder, _, _ = fp32
    model = onnx.load(decoder.path)
    weights = find_weights(model)
    assert not weights.tied
    inits = {init.name: init for init in model.graph.initializer}
    head = next(n for n in model.graph.node if n.name == weights.lm_head).input[1]
    table = next(n for n in model.graph.node if n.name == weights.embedding).input[0]
    inits[head].CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(inits[table]).T.copy(), head))
    onnx.save(model, tmp_path / "tied.onnx")

    record = quantize_decoder(tmp_path / "tied.onnx", tmp_path / "tied-int4.onnx", DecoderQuantSpec(embedding="float"))
    assert record.tied_lm_head
    head_decision = next(d for d in record.decisions if d.role == "lm_head")
    assert head_decision.precision == "int4" and "tied to the embedding" in head_decision.reason
    onnx_session(record.path)  # loads


def test_an_lm_head_read_through_a_transpose_gets_its_own_packed_copy(fp32, tmp_path):
    # How the exporter writes a large tied head (SmolLM2): MatMul(hidden, Transpose(embedding table)).
    _, decoder, _, _ = fp32
    model = onnx.load(decoder.path)
    weights = find_weights(model)
    head = next(n for n in model.graph.node if n.name == weights.lm_head)
    table = next(n for n in model.graph.node if n.name == weights.embedding).input[0]
    transpose = onnx.helper.make_node("Transpose", [table], ["table_t"], name="tied_transpose", perm=[1, 0])
    model.graph.node.insert(list(model.graph.node).index(head), transpose)
    head.input[1] = "table_t"
    onnx.save(model, tmp_path / "tied.onnx")
    assert find_weights(onnx.load(tmp_path / "tied.onnx")).lm_head is None  # no constant weight to pack as is

    record = quantize_decoder(tmp_path / "tied.onnx", tmp_path / "tied-int4.onnx", DecoderQuantSpec())
    assert record.tied_lm_head
    assert {(d.role, d.precision) for d in record.decisions if d.role in ("lm_head", "embedding")} == {
        ("lm_head", "int4"),
        ("embedding", "int4"),
    }
    written = onnx.load(record.path)
    assert not any(n.op_type == "Transpose" and n.name == "tied_transpose" for n in written.graph.node)
    float_tables = [i for i in written.graph.initializer if i.name == table]
    assert float_tables == []  # the fp32 table is gone: both readers hold packed copies
    onnx_session(record.path)


def test_block_minimum_packs_every_matmul_on_the_integer_path_and_rounds_closer_than_default(fp32):
    model, _, _, _ = fp32
    minimum, session = _quantized(
        fp32, "block_minimum", DecoderQuantSpec(algorithm="block_minimum", symmetric=False, accuracy_level=1)
    )
    default, default_session = _quantized(fp32, "default_l1", DecoderQuantSpec(accuracy_level=1))
    assert {d.precision for d in minimum.decisions} == {"int4"}  # the table by ORT's default, the rest by ours
    nodes = onnx.load(minimum.path).graph.node
    matmul_nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
    assert len(matmul_nbits) == 2 * BLOCK_MATMULS + 1
    assert all(len(n.input) == 4 for n in matmul_nbits)  # integer zero points (0): MatMulNBits' fast path
    assert minimum.size_bytes < 0.35 * minimum.source_bytes
    candidates = {
        "torch": torch_logits(model),
        "minimum": onnx_logits(session),
        "default": onnx_logits(default_session),
    }
    scores = language_scores(candidates, text_batches(), reference="torch")
    # random weights sit on no grid: asymmetric rounding, closer than symmetric (measured +0.6% vs +3.4%)
    gap = {name: abs(scores[name].perplexity / scores["torch"].perplexity - 1) for name in ("minimum", "default")}
    assert gap["minimum"] < gap["default"] and scores["minimum"].top1_agreement >= 0.5  # measured 0.61


def test_a_tied_8_bit_head_lends_its_bytes_to_the_embedding(tmp_path):
    from export.decoder.perplexity import language_scores as scores_of
    from export.quantize.tied import SHARED_EMBEDDING

    model = wide_llama(tie=True)
    decoder = export_decoder(model, tmp_path / "fp32.onnx")
    record = quantize_decoder(decoder.path, tmp_path / "int8.onnx", DecoderQuantSpec(bits=8, accuracy_level=1))
    embedding = next(d for d in record.decisions if d.role == "embedding")
    assert record.tied_lm_head and (embedding.precision, embedding.reason) == ("int8", SHARED_EMBEDDING)
    graph = onnx.load(record.path).graph
    (gather,) = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    producers = {out: n for n in graph.node for out in n.output}
    codes, scales = (producers[name].input[0] for name in gather.input[:3:2])  # through a Reshape each
    (head,) = [n for n in graph.node if n.op_type == "MatMulNBits" and n.input[1] == codes]
    # the LM head's own codes and scales, not copies; its implied zero point (128, symmetric) written out
    assert head.input[2] == scales and {a.name: a.i for a in head.attribute}["N"] == model.config.vocab_size
    assert {a.name: a.i for a in gather.attribute}["bits"] == 8
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    assert not [
        i for i in graph.initializer if list(i.dims) == [vocab, hidden] and i.data_type == onnx.TensorProto.FLOAT
    ]
    # an 8-bit table is nearly exact: the file agrees with torch on the teacher-forced tokens
    scores = scores_of(
        {"torch": torch_logits(model), "int8": onnx_logits(onnx_session(record.path))}, text_batches(), "torch"
    )
    assert scores["int8"].top1_agreement >= 0.95


def test_a_graph_whose_embedding_is_not_found_packs_its_matmuls_and_leaves_the_table(fp32, tmp_path):
    _, decoder, _, _ = fp32
    model = onnx.load(decoder.path)
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids")
    table = gather.input[0]
    model.graph.node.insert(0, onnx.helper.make_node("Identity", [table], ["table_read"], name="read_table"))
    gather.input[0] = "table_read"  # the table reached through a node: not an embedding find_weights knows
    onnx.save(model, tmp_path / "hidden_table.onnx")
    assert find_weights(model).embedding is None
    spec = DecoderQuantSpec(algorithm="block_minimum", symmetric=False, lm_head="quantize", embedding="float")
    record = quantize_decoder(tmp_path / "hidden_table.onnx", tmp_path / "int4.onnx", spec)
    assert {d.role for d in record.decisions} >= {"lm_head", "block 0"}
    assert all(d.precision == "int4" for d in record.decisions)
    packed = onnx.load(record.path)
    assert table in {init.name for init in packed.graph.initializer}  # the float table stays, read as before
    assert onnx_session(record.path) is not None


def test_a_tied_4_bit_head_on_the_symmetric_grid_is_packed_alone_and_lends_its_bytes(tmp_path):
    import torch

    from compress.training.weight_rounding import SymmetricRounding
    from export.quantize.tied import SHARED_EMBEDDING_INT4

    model = wide_llama(tie=True)
    with torch.no_grad():  # what distill.int4_grid: symmetric leaves: every Linear (the tied table too) on the grid
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(SymmetricRounding(32)(module.weight))
    decoder = export_decoder(model, tmp_path / "fp32.onnx")
    spec = DecoderQuantSpec(algorithm="block_minimum", symmetric=True, lm_head="quantize", accuracy_level=1)
    record = quantize_decoder(decoder.path, tmp_path / "int4.onnx", spec)
    embedding = next(d for d in record.decisions if d.role == "embedding")
    assert record.tied_lm_head and (embedding.precision, embedding.reason) == ("int4", SHARED_EMBEDDING_INT4)
    graph = onnx.load(record.path).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulNBits") == 2 * BLOCK_MATMULS + 1
    assert not [n.name for n in graph.node if n.name.endswith(("_minimums", "_block_sums_op"))]  # no offsets
    assert all(len(n.input) == 3 for n in graph.node if n.op_type == "MatMulNBits")  # no zero points, no offsets
    (gather,) = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    producers = {out: n for n in graph.node for out in n.output}
    codes = producers[gather.input[0]].input[0]  # through a Reshape
    (head,) = [n for n in graph.node if n.op_type == "MatMulNBits" and n.input[1] == codes]
    assert {a.name: a.i for a in gather.attribute}["bits"] == 4 and len(gather.input) == 3  # implied zero point 8
    assert not [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2]
    read = {name for node in graph.node for name in node.input}
    assert not [i.name for i in graph.initializer if i.name not in read]  # nothing written that no node reads
    # exact: the file computes what the rounded torch model does (fp32 compute at level 1)
    scores = language_scores(
        {"torch": torch_logits(model), "int4": onnx_logits(onnx_session(record.path))}, text_batches(), "torch"
    )
    assert scores["int4"].top1_agreement == 1.0
    assert abs(scores["int4"].perplexity / scores["torch"].perplexity - 1) < 1e-4
    assert head.name.endswith("_Q4") and record.size_bytes < 0.25 * record.source_bytes  # measured 0.233x
