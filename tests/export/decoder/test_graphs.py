"""Which graph a decoder with its cache becomes: onnxruntime-genai's builder (fused attention) where it
knows the family and matches torch, torch's export otherwise, with the reason."""

from collections import Counter

import onnx
import pytest
import torch

from export.decoder.graphs import export_with_cache
from export.decoder.parity import decoding_parity, generation_parity, onnx_session
from export.errors import ExportError
from tests.export.decoder.wide_llama import wide_llama
from tests.tiny_decoders import tiny_decoder


def test_the_builder_graph_fuses_attention_and_generates_like_torch(tmp_path):
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    model = wide_llama()
    made, facts = export_with_cache(model, tmp_path / "decoder.onnx", 21, "auto")
    assert facts["decoder_graph"] == "genai_builder" and "decoder_graph_fallback" not in facts
    ops = Counter(node.op_type for node in onnx.load(str(made.path)).graph.node)
    # per layer: one GroupQueryAttention (rotary inside), packed qkv (the builder's), o, gate and up packed
    # (ours) and split, down; then the LM head
    assert ops["GroupQueryAttention"] == 2 and ops["MatMul"] == 2 * 4 + 1 and ops["Split"] == 2
    assert facts["packed_matmuls"] == 2
    assert ops["SkipSimplifiedLayerNormalization"] == 4 and ops["SimplifiedLayerNormalization"] == 1
    assert "position_ids" not in made.input_names  # GroupQueryAttention reads positions from the mask
    ids = torch.randint(3, 256, (3, 9), generator=torch.Generator().manual_seed(4))
    session = onnx_session(made.path)
    parity = generation_parity(model, session, ids, torch.ones_like(ids), steps=4)
    assert parity.ok, parity.to_dict()
    mask = torch.ones_like(ids)
    mask[2, -3:] = 0  # a right-padded prefill, as the run's text batches: the same logits on real tokens
    assert generation_parity(model, session, ids, mask, steps=0).ok
    # the run's decoding check cuts right-padded rows to the shortest (see decoding_parity)
    assert decoding_parity(model, session, {"input_ids": ids, "attention_mask": mask})["tokens_agree"]


def test_a_head_size_the_fused_kernel_refuses_falls_back_to_torch_with_the_reason(tmp_path):
    model = tiny_decoder("llama")  # heads of 8
    made, facts = export_with_cache(model, tmp_path / "decoder.onnx", 21, "auto")
    assert facts["decoder_graph"] == "torch" and "multiple of 16 (this model: 8)" in facts["decoder_graph_fallback"]
    assert "position_ids" in made.input_names
    with pytest.raises(ExportError, match="multiple of 16"):
        export_with_cache(model, tmp_path / "fused.onnx", 21, "genai_builder")
