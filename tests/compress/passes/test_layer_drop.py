"""layer_drop: whole blocks removed, the kept ones computing exactly what they did; config, KV cache,
ONNX export and run-folder reload follow; importance by Block Influence; bad settings refused clearly."""

import copy

import onnx
import pytest
import torch
from torch import nn

import compress
from compress.core.errors import InputError, RecipeError
from compress.engine.context import Context
from compress.models.blocks import block_lists
from compress.models.data import TaskData
from compress.passes.layer_drop import LayerDropConfig, layer_drop
from compress.recipe.schema import load_recipe
from tests.tiny_models import MLP, TinyTransformer, tiny_gpt2, tiny_vit, token_data


def bert4():
    """A 4-layer BERT sentence encoder (random weights, mean pooling), as the MiniLM workload is built."""
    from transformers import BertConfig, BertModel

    from compress.models.hf import SentenceEncoder

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32,
    )  # fmt: skip
    return SentenceEncoder(BertModel(config, add_pooling_layer=False)).eval()


def llama4():
    """A 4-layer Llama causal LM with grouped-query attention and a KV cache (random weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=32,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


MODELS = {"bert": (bert4, "encoder.encoder.layer"), "llama": (llama4, "model.layers")}


def inputs_for(arch):
    return token_data().eval[0][0] if arch == "bert" else {"input_ids": torch.randint(2, 64, (2, 8))}


def output(model, inputs):
    with torch.no_grad():
        result = model(**inputs)
    return result if isinstance(result, torch.Tensor) else result.logits


def drop(model, config, inputs, data=None):
    ctx = Context(data, inputs, copy.deepcopy(model), None)
    return layer_drop(model, config, ctx), ctx.facts


def by_hand(model, path, kept):
    """The reference: a copy whose block list is rebuilt with only the kept blocks."""
    reference = copy.deepcopy(model)
    parent, _, name = path.rpartition(".")
    blocks = reference.get_submodule(path)
    setattr(reference.get_submodule(parent), name, nn.ModuleList(blocks[i] for i in kept))
    return reference


@pytest.mark.parametrize(
    ("arch", "settings", "kept"),
    [
        ("bert", {"strategy": "every_other"}, [0, 2]),
        ("bert", {"keep": 2, "strategy": "uniform"}, [0, 3]),
        ("bert", {"ratio": 0.5}, [0, 3]),  # uniform by default
        ("bert", {"keep": 2, "strategy": "first"}, [0, 1]),
        ("bert", {"keep": 1}, [3]),
        ("llama", {"layers": [3, 1]}, [1, 3]),
        ("llama", {"keep": 3}, [0, 2, 3]),  # 1.5 rounds half up
    ],
)
def test_kept_blocks_compute_exactly_what_they_did(arch, settings, kept):
    factory, path = MODELS[arch]
    original, inputs = factory(), inputs_for(arch)
    model, record = drop(copy.deepcopy(original), LayerDropConfig(**settings), inputs)
    assert len(model.get_submodule(path)) == len(kept)
    assert record["blocks"] == path
    assert record["kept_layers"] == record["kept_of_input"] == kept
    assert record["dropped_layers"] == [i for i in range(4) if i not in kept]
    assert record["config_updates"] == {"num_hidden_layers": len(kept)}
    assert record["params_after"] < record["params_before"]
    config = model.encoder.config if arch == "bert" else model.config
    assert config.num_hidden_layers == len(kept)
    assert torch.equal(output(model, inputs), output(by_hand(original, path, kept), inputs))


def test_llama_kv_cache_generation_and_save_reload_after_drop(tmp_path):
    """layer_idx indexes the KV cache: renumbered, cached decoding matches a full forward pass."""
    from transformers import LlamaForCausalLM

    ids = torch.randint(2, 64, (2, 8))
    model, record = drop(llama4(), LayerDropConfig(layers=[1, 3]), {"input_ids": ids})
    assert [block.self_attn.layer_idx for block in model.model.layers] == [0, 1]
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        prefix = model(ids[:, :5], use_cache=True)
        step = model(ids[:, 5:], past_key_values=prefix.past_key_values, use_cache=True).logits
    torch.testing.assert_close(step, full[:, 5:], atol=1e-5, rtol=1e-5)
    assert len(prefix.past_key_values.layers) == 2
    generated = model.generate(ids, max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(ids))
    assert generated.shape == (2, 12)
    model.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 2
    assert torch.equal(output(reloaded, {"input_ids": ids}), output(model, {"input_ids": ids}))


def test_per_block_config_lists_follow_the_kept_blocks():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    types = ["full_attention", "sliding_attention", "full_attention", "full_attention"]
    config = Qwen2Config(
        vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=32, layer_types=types, use_sliding_window=True, sliding_window=4,
    )  # fmt: skip
    ids = torch.randint(2, 64, (2, 8))
    model, record = drop(Qwen2ForCausalLM(config).eval(), LayerDropConfig(layers=[1, 2]), {"input_ids": ids})
    assert record["config_updates"] == {"num_hidden_layers": 2, "layer_types": types[1:3]}
    assert model.config.layer_types == types[1:3]
    assert model.generate(ids, max_new_tokens=2, do_sample=False, attention_mask=torch.ones_like(ids)).shape == (2, 10)


def count_ops(path, kinds=("MatMul", "Gemm")):
    return sum(node.op_type in kinds for node in onnx.load(str(path)).graph.node)


def test_run_exports_onnx_and_the_run_folder_reloads_the_shallow_model(tmp_path):
    data = token_data()
    passes = [
        {"pass": "layer_drop", "strategy": "every_other"},
        {"pass": "distill", "loss": "embedding_mse", "epochs": 1, "max_steps": 2},
    ]
    recipe = {"name": "drop", "passes": passes, "task": {"metric": "accuracy"}}
    result = compress.run(bert4(), recipe, data=data, out_dir=tmp_path, report=False)
    assert [a["status"] for a in result.artifacts] == ["passed", "passed"]
    paths = {a["name"]: a["path"] for a in result.artifacts}
    # Every MatMul of BERT is inside a block: half the blocks, half the MatMuls.
    assert count_ops(tmp_path / paths["compressed"]) * 2 == count_ops(tmp_path / paths["baseline"]) > 0
    assert result.stages[1].record["kept_layers"] == [0, 2]
    loaded = compress.load(tmp_path, model=bert4())
    inputs = data.eval[0][0]
    assert len(loaded.encoder.encoder.layer) == 2 and loaded.encoder.config.num_hidden_layers == 2
    assert torch.equal(output(loaded, inputs), output(result.model, inputs))
    dropped = compress.load(tmp_path, "layer_drop", model=bert4())
    assert sum(p.numel() for p in dropped.parameters()) == result.stages[1].params
    resumed = compress.run(bert4(), recipe, data=data, out_dir=tmp_path, export=False, report=False)
    assert [s.resumed for s in resumed.stages] == [True, True, True]
    assert torch.equal(output(resumed.model, inputs), output(result.model, inputs))


def test_a_second_drop_records_the_teachers_indices():
    """kept_layers always name the pipeline input's blocks (what distill maps students to)."""
    inputs = inputs_for("bert")
    ctx = Context(None, inputs, bert4(), None)
    model = layer_drop(bert4(), LayerDropConfig(strategy="every_other"), ctx)
    ctx.history, ctx.facts = [dict(ctx.facts)], {}
    model = layer_drop(model, LayerDropConfig(keep=1), ctx)
    assert ctx.facts["kept_of_input"] == [1]
    assert ctx.facts["kept_layers"] == [2] and ctx.facts["dropped_layers"] == [0, 1, 3]
    assert torch.equal(output(model, inputs), output(by_hand(bert4(), "encoder.encoder.layer", [2]), inputs))


def identity_blocks(model, indices):
    """Zero the output projections of these Llama blocks: with pre-norm residuals they return their input."""
    with torch.no_grad():
        for i in indices:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    return model


def calibration(batches=3):
    g = torch.Generator().manual_seed(3)
    rows = [({"input_ids": torch.randint(2, 64, (2, 8), generator=g)}, torch.zeros(2)) for _ in range(batches)]
    return TaskData(eval=rows, calibration=rows)


def test_importance_keeps_the_blocks_that_change_their_input():
    model, data = identity_blocks(llama4(), [1, 3]), calibration()
    model, record = drop(
        model, LayerDropConfig(keep=2, strategy="importance", calibration_batches=2), data.eval[0][0], data
    )
    assert record["kept_layers"] == [0, 2] and record["calibration_batches"] == 2
    scores = record["block_influence"]
    assert scores[1] < 1e-9 and scores[3] < 1e-9  # an identity block changes nothing
    assert min(scores[0], scores[2]) > 0.01


def test_importance_is_deterministic_for_a_seed():
    data = token_data()
    picks = [drop(bert4(), LayerDropConfig(keep=2, strategy="importance"), data.eval[0][0], data)[1] for _ in range(2)]
    assert picks[0]["block_influence"] == picks[1]["block_influence"]
    assert picks[0]["kept_layers"] == picks[1]["kept_layers"]
    assert len(picks[0]["kept_layers"]) == 2


def test_blocks_are_found_by_structure():
    assert list(block_lists(bert4())) == ["encoder.encoder.layer"]
    assert list(block_lists(llama4())) == ["model.layers"]
    assert list(block_lists(tiny_gpt2())) == ["transformer.h"]
    assert list(block_lists(tiny_vit())) == ["vit.layers"]  # transformers 5 names ViT's blocks so
    assert list(block_lists(TinyTransformer())) == ["blocks"]


class MixtureBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(4, 4)) for _ in range(3))

    def forward(self, x):
        return x + sum(expert(x) for expert in self.experts)


class TwoStacks(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.ModuleList(MixtureBlock() for _ in range(3))
        self.decoder = nn.ModuleList(MixtureBlock() for _ in range(3))

    def forward(self, x):
        for block in [*self.encoder, *self.decoder]:
            x = block(x)
        return x


def test_experts_inside_blocks_are_not_blocks_and_two_stacks_need_a_name():
    model, x = TwoStacks(), torch.randn(2, 4)
    assert list(block_lists(model)) == ["encoder", "decoder"]
    with pytest.raises(InputError, match=r"several lists of repeated blocks: 'encoder' \(3 x MixtureBlock\).*blocks:"):
        drop(model, LayerDropConfig(keep=2), x)
    model, record = drop(model, LayerDropConfig(keep=2, blocks="decoder"), x)
    assert len(model.decoder) == 2 and len(model.encoder) == 3 and record["kept_layers"] == [0, 2]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"keep": 2, "ratio": 0.5}, "give one of keep, ratio or layers, not keep and ratio"),
        ({"layers": [0, 0]}, r"repeats an index"),
        ({"layers": [0], "strategy": "first"}, "no strategy applies"),
        ({"keep": 2, "strategy": "every_other"}, "every_other keeps blocks 0, 2, 4"),
        ({"strategy": "uniform"}, "say which blocks stay"),
        ({"keep": 0}, "keep"),
        ({"ratio": 1.0}, "ratio"),
        ({"layers": [-1]}, "layers"),
        ({"strategy": "deepest", "keep": 1}, "strategy"),
    ],
)
def test_bad_settings_are_refused_by_the_recipe(settings, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe({"passes": [{"pass": "layer_drop", **settings}]})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"keep": 4}, r"'encoder.encoder.layer' of SentenceEncoder has 4 blocks and keeping 4; keep between 1 and 3"),
        ({"ratio": 0.1}, r"has 4 blocks and ratio 0.1 keeps 4"),
        ({"layers": [0, 1, 2, 3]}, "keeping 4"),
        ({"layers": [0, 4]}, r"layers \[4\] are out of range: .* has 4 blocks \(indices 0 to 3\)"),
        (
            {"keep": 2, "blocks": "encoder.nope"},
            r"blocks 'encoder.nope' is not an nn.ModuleList .*'encoder.encoder.layer'",
        ),
        ({"keep": 2, "strategy": "importance"}, "no calibration or train split"),
    ],
)
def test_settings_that_do_not_fit_the_model_are_input_errors(settings, message):
    model = bert4()
    with pytest.raises(InputError, match=message):
        drop(model, LayerDropConfig(**settings), inputs_for("bert"), data=TaskData(eval=[]))
    assert len(model.encoder.encoder.layer) == 4  # refused before any change


def test_a_model_without_repeated_blocks_is_refused():
    with pytest.raises(InputError, match="MLP has no list of repeated blocks .* blocks: <path>"):
        drop(MLP(), LayerDropConfig(keep=1), torch.randn(2, 12))
