"""structured_prune on Hugging Face transformers: whole heads and FFN neurons, consistent config."""

import copy

import pytest
import torch

from compress.engine.context import Context
from compress.engine.pipeline import run_pipeline
from compress.models.data import call_model, first_tensor
from compress.models.evaluate import EVALUATORS
from compress.passes.structured_prune import StructuredPruneConfig, structured_prune
from compress.pruning.attention import attention_modules, head_counts, head_scores
from compress.pruning.conv1d import in_rows, out_width
from compress.recipe.schema import load_recipe
from tests.tiny_models import image_data, tiny_bert, tiny_gpt2, tiny_vit, token_data

FFN = {"tiny_bert": r"re:.*intermediate\.dense", "tiny_vit": r"re:.*mlp\.fc1", "tiny_gpt2": r"re:.*mlp\.c_fc"}
FFN_FIELD = {"tiny_bert": "intermediate_size", "tiny_vit": "intermediate_size", "tiny_gpt2": "n_inner"}
ARCHS = {"tiny_bert": (tiny_bert, token_data), "tiny_vit": (tiny_vit, image_data), "tiny_gpt2": (tiny_gpt2, token_data)}


def prune_heads_and_ffn(arch, head_ratio=0.5, ffn_ratio=0.5):
    factory, data_factory = ARCHS[arch]
    model, data = factory(), data_factory()
    ctx = Context(data, data.eval[0][0], copy.deepcopy(model), lambda m, split="eval": 0.0)
    config = StructuredPruneConfig(ratio=0.0, head_ratio=head_ratio, layer_ratios={FFN[arch]: ffn_ratio})
    return structured_prune(model, config, ctx), ctx.facts, data


@pytest.mark.parametrize("arch", list(ARCHS))
def test_heads_and_ffn_are_removed_and_shapes_agree(arch):
    original = ARCHS[arch][0]()
    model, record, data = prune_heads_and_ffn(arch)
    assert set(head_counts(model).values()) == {2}
    for name, (module, layout) in attention_modules(model).items():
        assert len(record["removed_heads"][name]) == 2
        rows = {out_width(getattr(module, p)) // layout.sections for p in layout.projections}
        assert rows == {in_rows(layout.output_layer(model, name)).shape[0]} == {2 * 8}
    assert record["config_updates"][FFN_FIELD[arch]] == 32
    inputs = data.eval[0][0]
    with torch.no_grad():
        out = first_tensor(call_model(model, inputs))
        ref = first_tensor(call_model(original, inputs))
    assert out.shape == ref.shape


def test_lowest_scoring_heads_are_the_ones_removed():
    original = tiny_bert()
    name = next(iter(attention_modules(original)))
    scores = head_scores(original, name, p=2)
    _, record, _ = prune_heads_and_ffn("tiny_bert")
    assert record["removed_heads"][name] == sorted(torch.topk(scores, 2, largest=False).indices.tolist())


def test_kept_heads_compute_exactly_what_they_did():
    """Removing heads slices weights; the kept heads' q/k/v rows are unchanged."""
    original = tiny_bert()
    model, record, _ = prune_heads_and_ffn("tiny_bert", ffn_ratio=0.0)
    name, removed = next(iter(record["removed_heads"].items()))
    kept = [h for h in range(4) if h not in removed]
    rows = [h * 8 + i for h in kept for i in range(8)]
    before, after = original.get_submodule(name), model.get_submodule(name)
    for projection in ("query", "key", "value"):
        assert torch.equal(getattr(after, projection).weight, getattr(before, projection).weight[rows])


def test_vit_config_describes_the_pruned_model_and_reloads(tmp_path):
    from transformers import ViTForImageClassification

    model, record, data = prune_heads_and_ffn("tiny_vit")
    assert record["config_updates"] == {"intermediate_size": 32, "head_dim": 8, "num_attention_heads": 2}
    model.save_pretrained(tmp_path)
    reloaded = ViTForImageClassification.from_pretrained(tmp_path).eval()
    x = data.eval[0][0]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, model(x).logits, atol=0, rtol=0)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_resume_replays_head_removal(arch, tmp_path):
    factory, data_factory = ARCHS[arch]
    data = data_factory()
    recipe = load_recipe(
        {"passes": [{"pass": "structured_prune", "ratio": 0.0, "head_ratio": 0.5, "layer_ratios": {FFN[arch]: 0.5}}]}
    )
    first = run_pipeline(factory(), recipe, data, EVALUATORS["accuracy"], data.eval[0][0], tmp_path)
    second = run_pipeline(factory(), recipe, data, EVALUATORS["accuracy"], data.eval[0][0], tmp_path)
    assert second.stages[-1].resumed
    assert head_counts(second.model) == head_counts(first.model)
    assert all(torch.equal(v, second.model.state_dict()[k]) for k, v in first.model.state_dict().items())


def test_macs_target_on_gpt2_is_refused_clearly():
    from compress.passes.structured_prune import PruneError

    model, data = tiny_gpt2(), token_data()
    ctx = Context(data, data.eval[0][0], copy.deepcopy(model), lambda m, split="eval": 0.0)
    with pytest.raises(PruneError, match="macs_reduction needs MACs.*Conv1D"):
        structured_prune(model, StructuredPruneConfig(macs_reduction=0.3), ctx)


def test_llama_gqa_heads_and_channels_config_describes_the_pruned_model(tmp_path):
    """Grouped-query attention + rotary + RMSNorm: pruned, still consistent, and reloadable from its config."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=32, use_cache=False,
    )  # fmt: skip
    model, ids = LlamaModel(config).eval(), torch.randint(2, 64, (2, 8))
    ctx = Context(None, {"input_ids": ids}, copy.deepcopy(model), None)
    model = structured_prune(model, StructuredPruneConfig(ratio=0.3, head_ratio=0.25), ctx)
    assert ctx.facts["config_updates"] == {
        "intermediate_size": 48,
        "head_dim": 8,
        "num_attention_heads": 2,
    }  # 44.8 rounded to 8s
    assert head_counts(model) == {"layers.0.self_attn": 2, "layers.1.self_attn": 2}
    model.save_pretrained(tmp_path)
    reloaded = LlamaModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).last_hidden_state, model(ids).last_hidden_state, atol=0, rtol=0)
