"""A decoder's int4 artifact in a run: the builder's fused graph packed by ``quantize_decoder`` with the
LM head at 8 bits, and each kind of weight's accuracy level chosen by measured top-1."""

import json

import onnx
import pytest
import torch
import yaml

import compress
from export.quantize.decoder_variant import EXACT_LEVEL, FAST_LEVEL, choose_levels
from export.quantize.int4_levels import offered_levels
from tests.export.decoder.wide_llama import wide_llama
from tests.tiny_decoders import og_greedy, word_level_tokenizer

SLOTS = {"attn/qkv_proj/MatMul": ["q0", "q1"], "mlp/down_proj/MatMul": ["d0", "d1"], "lm_head": ["h"]}


def _model(nodes):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMulNBits", [], [n], name=f"{n}_Q4", domain="com.microsoft") for n in nodes],
        "g", [], [],
    )  # fmt: skip
    return onnx.helper.make_model(graph)


def test_levels_move_the_kinds_that_gain_most_per_weight_until_the_floor_holds():
    gains = {"q0": 0.02, "q1": 0.02, "d0": 0.01, "d1": 0.01, "h": 0.03}  # per node moved to level 1
    calls = []

    def measure(model, levels):
        calls.append(dict(levels))
        return 0.85 + sum(gain for node, gain in gains.items() if levels[node] == EXACT_LEVEL)

    model = _model([n for names in SLOTS.values() for n in names])
    record = choose_levels(model, SLOTS, measure, floor=0.915)
    # gain per node: lm_head 0.03 > qkv 0.02 > down 0.01: the head first (0.88), then qkv (0.92 >= floor)
    assert record["level_1"] == ["lm_head", "attn/qkv_proj/MatMul"] and record["top1"] == pytest.approx(0.92)
    assert len(calls) == 1 + len(SLOTS) + 1  # level 4 everywhere, each kind alone, then the pair
    written = {n.name: next(a.i for a in n.attribute if a.name == "accuracy_level") for n in model.graph.node}
    assert written == {"q0_Q4": 1, "q1_Q4": 1, "d0_Q4": FAST_LEVEL, "d1_Q4": FAST_LEVEL, "h_Q4": 1}
    assert "floor" in record["reason"] and "not reached" not in record["reason"]
    unreachable = choose_levels(_model(["q0", "q1", "d0", "d1", "h"]), SLOTS, measure, floor=0.99)
    assert unreachable["level_1"] == ["lm_head", "attn/qkv_proj/MatMul", "mlp/down_proj/MatMul"]
    assert "not reached" in unreachable["reason"]


TEXT = [" ".join(f"w{(11 * i + 7 * j) % 250 + 3}" for j in range(12 + i % 4)) for i in range(16)]


@pytest.mark.slow
def test_a_decoder_int4_variant_keeps_its_head_at_8_bits_and_chooses_levels(tmp_path):
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    folder = tmp_path / "wide-llama"
    wide_llama().save_pretrained(folder)
    word_level_tokenizer(256).save_pretrained(folder)
    variant = {"scheme": "int4", "name": "int4", "block_size": 32, "accuracy_level": "auto", "lm_head": "int8"}
    recipe = {
        "name": "tiny-int4",
        "model": {"factory": "compress.models.hf:causal_lm", "kwargs": {"path": str(folder)}},
        "data": {
            "factory": "compress.models.text:text_data",
            "kwargs": {"eval": TEXT[:8], "validation": TEXT[8:], "tokenizer": str(folder), "batch_size": 4},
        },
        "task": {"metric": "perplexity"},
        "passes": [{"pass": "quantize", "onnx": [variant]}],
        "export": {"check_providers": [], "opset": 21, "baseline": False,
                   "parity": {"quantized_min_top1_agreement": 0.5, "quantized_min_cosine": 0.5}},
        "report": {"batch_sizes": [1], "warmup": 1, "iterations": 3, "max_seconds": 0.5,
                   "generation": {"prompt_tokens": 8, "new_tokens": 4, "rounds": 2}},
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = compress.run_recipe(path, out_dir=tmp_path / "run")
    artifact = {a["name"]: a for a in result.artifacts}["int4"]
    assert artifact["decoder_graph"] == "genai_builder" and artifact["lm_head"].startswith("int8")
    levels = artifact["accuracy_levels"]  # random weights at 4 bits: the floor holds at level 4 (the unit test moves)
    assert levels["split"] == "validation" and levels["floor"] == pytest.approx(0.51)
    assert levels["trials"] == [{"level 1": [], "top1": levels["top1"]}] and levels["top1"] >= 0.51
    # every level surveyed for agreement and a timed decode step, the fast level's speed in the reason
    survey = {row["level"]: row for row in levels["survey"]}
    assert sorted(survey) == offered_levels() and survey[FAST_LEVEL]["top1"] == levels["top1"]
    assert all(0 < row["top1"] <= 1 and row["decode_step_ms"] > 0 for row in survey.values())
    assert survey[EXACT_LEVEL]["speed_vs_level_1"] == 1.0 and "decodes" in levels["reason"]
    graph = onnx.load(str(tmp_path / "run" / artifact["path"]))
    written = {}
    for node in graph.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            written[node.name] = (attrs["bits"], attrs["accuracy_level"])
    assert [bits for name, (bits, _) in written.items() if "lm_head" in name] == [8]
    moved = {name for name, (_, level) in written.items() if level == EXACT_LEVEL}
    for kind in levels["level_1"]:  # every node of a kind moved to level 1 is written at level 1
        assert all(name in moved for name in written if kind.removesuffix("/MatMul") in name)
    assert artifact["status"] == "passed", artifact.get("error")
    assert artifact["parity"]["top1_agreement"] >= 0.5
    # the generation benchmark: both folders timed in turns, ratios against the float one
    (speed,) = artifact["generation"]
    assert speed["baseline"] == "compressed" and speed["new_tokens"] == 4 and speed["rounds"] == 2
    assert speed["decode_tokens_per_s"] > 0 and speed["decode_ratio"] > 0 and speed["peak_rss_mb"] > 0
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "## Generation" in markdown and "### int4: accuracy_level" in markdown
    assert f"Chosen: {levels['reason']}." in markdown
    # perplexity against decode speed: both folders drawn (ms per token), the Pareto front over them
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["plots"]["metric_vs_decode"] == "plots/metric_vs_decode.png"
    assert (tmp_path / "run" / "plots" / "metric_vs_decode.png").stat().st_size > 1000
    _og_matches_ort(tmp_path / "run" / artifact["genai_folder"], tmp_path / "run" / artifact["path"])


def _og_matches_ort(folder, onnx_path, prompt=(1, 17, 33, 45, 9), new_tokens=6):
    """onnxruntime-genai (shared KV buffer) picks the same greedy tokens as the same file stepped by hand."""
    from export.decoder.parity import onnx_session
    from export.decoder.perplexity import greedy_tokens

    ids = torch.tensor([prompt])
    expected = greedy_tokens(onnx_session(onnx_path), ids, torch.ones_like(ids), new_tokens)
    assert og_greedy(folder, prompt, new_tokens)[len(prompt) :] == expected[0].tolist()
