"""The search space: built from what structured_prune can cut in the model, narrowed by the recipe."""

import pytest
import torch

from compress.core.errors import RecipeError
from compress.recipe.schema import load_recipe
from compress.recipe.search_spec import SearchSpec, parse_search_spec
from compress.search.space import DEFAULT_AXES, Candidate, build_space, scaled_distill
from tests.tiny_models import mlp, residual_cnn, tiny_bert


def test_a_cnn_gets_channel_ratios_not_heads():
    space = build_space(residual_cnn(), load_recipe({}), SearchSpec(), 0.01)
    assert space.kind == "cnn"
    assert [c.ratio for c in space.candidates] == DEFAULT_AXES["cnn"]["prune_ratios"]
    assert {(c.head_ratio, c.ffn_ratio) for c in space.candidates} == {(0.0, 0.0)}
    assert [v["scheme"] for v in space.variants] == ["int8_static"] and space.keep_fp32


def test_a_transformer_gets_depth_heads_and_ffn_ratios_not_hidden_channels():
    space = build_space(tiny_bert(), load_recipe({}), SearchSpec(), 0.01)
    assert space.kind == "transformer"
    assert {c.ratio for c in space.candidates} == {0.0}
    assert {(c.depth_ratio, c.head_ratio, c.ffn_ratio) for c in space.candidates} == {
        (d, h, f) for d in (0.0, 0.5) for h in (0.0, 0.25, 0.5) for f in (0.0, 0.25, 0.5)
    }
    assert len(space.candidates) == 18
    pruned = space.passes(next(c for c in space.candidates if c.ffn_ratio == 0.5 and c.head_ratio == 0.25), 0)
    assert pruned[0]["layer_ratios"] == {r"re:.*intermediate\.dense$": 0.5} and pruned[0]["head_ratio"] == 0.25
    assert [v["scheme"] for v in space.variants] == ["int8_dynamic"]


def test_the_depth_axis_drops_blocks_first_with_the_recipes_layer_drop_settings():
    recipe = load_recipe(
        {
            "passes": [
                {"pass": "layer_drop", "keep": 1, "strategy": "importance", "calibration_batches": 2},
                {"pass": "distill", "epochs": 10},
            ],
            "search": {"depth_ratios": [0.5], "head_ratios": [0.0, 0.5], "ffn_ratios": [0.0]},
        }
    )
    space = build_space(tiny_bert(), recipe, parse_search_spec(recipe.search), 0.01)
    depth_only, depth_and_heads = (space.passes(c, 0) for c in space.candidates)
    assert [p["pass"] for p in depth_only] == ["layer_drop", "distill", "quantize"]
    assert [p["pass"] for p in depth_and_heads] == ["layer_drop", "structured_prune", "distill", "quantize"]
    # The search sets how many blocks go; the recipe's strategy and calibration stay, its own count does not.
    drop = {key: value for key, value in depth_only[0].items() if value is not None}
    assert drop == {"pass": "layer_drop", "ratio": 0.5, "strategy": "importance", "calibration_batches": 2}
    assert depth_and_heads[1]["head_ratio"] == 0.5
    assert [c.label() for c in space.candidates] == ["depth 0.5", "depth 0.5, heads 0.5"]


def test_the_ffn_axis_replaces_the_recipes_own_ffn_ratio_and_keeps_its_other_layer_ratios():
    recipe = load_recipe(
        {
            "passes": [
                {
                    "pass": "structured_prune",
                    "head_ratio": 0.5,
                    "layer_ratios": {"re:.*intermediate\\.dense": 0.25, "re:.*attention\\.output\\.dense": 0.1},
                }
            ],
            "search": {"depth_ratios": [0.0], "head_ratios": [0.5], "ffn_ratios": [0.0, 0.5]},
        }
    )
    space = build_space(tiny_bert(), recipe, parse_search_spec(recipe.search), 0.01)
    heads_only, heads_and_ffn = (space.passes(c, 0)[0]["layer_ratios"] for c in space.candidates)
    assert heads_only == {"re:.*attention\\.output\\.dense": 0.1}  # ffn 0 cuts no FFN neuron
    assert heads_and_ffn == {"re:.*attention\\.output\\.dense": 0.1, r"re:.*intermediate\.dense$": 0.5}


def test_a_layer_ratios_key_naming_ffn_and_other_layers_is_refused_with_the_fix():
    recipe = load_recipe({"passes": [{"pass": "structured_prune", "layer_ratios": {"re:.*dense": 0.25}}]})
    with pytest.raises(RecipeError, match=r"names FFN layers.*and others \(.*attention.*narrow it"):
        build_space(tiny_bert(), recipe, SearchSpec(), 0.01)


def test_depth_ratios_keeping_no_block_or_as_many_as_another_are_left_out():
    spec = SearchSpec(depth_ratios=[0.0, 0.5, 0.6, 0.9], head_ratios=[0.0], ffn_ratios=[0.0])
    space = build_space(tiny_bert(), load_recipe({}), spec, 0.01)  # 2 blocks: 0.6 keeps 1 as 0.5 does, 0.9 none
    assert [c.depth_ratio for c in space.candidates] == [0.0, 0.5]


def test_a_recipe_dropping_every_other_block_or_named_blocks_lends_the_rest_of_its_settings():
    for chosen in ({"strategy": "every_other"}, {"layers": [0]}):
        recipe = load_recipe({"passes": [{"pass": "layer_drop", "calibration_batches": 3, **chosen}]})
        spec = SearchSpec(depth_ratios=[0.5], head_ratios=[0.0], ffn_ratios=[0.0])
        drop = build_space(tiny_bert(), recipe, spec, 0.01).passes(Candidate(depth_ratio=0.5), 0)[0]
        assert (drop["ratio"], drop["calibration_batches"]) == (0.5, 3)
        assert drop.get("strategy") is None and drop.get("layers") is None  # layer_drop's default: uniform


def test_a_model_with_two_block_lists_and_no_blocks_setting_gets_no_depth_axis():
    class TwoStacks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(4, 4)) for _ in range(2))
            self.decoder = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(4, 4)) for _ in range(2))

        def forward(self, x):
            for block in [*self.encoder, *self.decoder]:
                x = block(x)
            return x

    spec = SearchSpec(depth_ratios=[0.0, 0.5])
    assert {c.depth_ratio for c in build_space(TwoStacks(), load_recipe({}), spec, 0.01).candidates} == {0.0}
    named = load_recipe({"passes": [{"pass": "layer_drop", "keep": 1, "blocks": "decoder"}]})
    assert {c.depth_ratio for c in build_space(TwoStacks(), named, spec, 0.01).candidates} == {0.0, 0.5}


def test_a_model_without_repeated_blocks_gets_no_depth_axis():
    space = build_space(residual_cnn(), load_recipe({}), SearchSpec(depth_ratios=[0.0, 0.5]), 0.01)
    assert {c.depth_ratio for c in space.candidates} == {0.0}


def test_a_plain_mlp_gets_neuron_ratios():
    space = build_space(mlp(), load_recipe({}), SearchSpec(), 0.01)
    assert space.kind == "mlp" and [c.ratio for c in space.candidates] == DEFAULT_AXES["mlp"]["prune_ratios"]


def test_the_recipe_narrows_the_space_and_lends_its_pass_settings():
    recipe = load_recipe(
        {
            "passes": [
                {"pass": "structured_prune", "ratio": 0.5, "importance": "l1", "round_to": 1},
                {"pass": "distill", "epochs": 10, "max_steps": 100, "lr": 0.01},
                {"pass": "quantize", "max_metric_drop": 0.02, "onnx": [{"scheme": "int8_static", "name": "int8"}]},
            ],
            "search": {"prune_ratios": [0.0, 0.75], "distill_fractions": [0.3, 1.0]},
        }
    )
    space = build_space(residual_cnn(), recipe, parse_search_spec(recipe.search), 0.01)
    assert [c.ratio for c in space.candidates] == [0.0, 0.75]
    assert [v["name"] for v in space.variants] == ["int8"]  # the recipe's own variant, by its name
    no_prune, prune = (space.passes(c, 0) for c in space.candidates)
    assert [p["pass"] for p in no_prune] == ["quantize"]  # nothing cut, nothing to recover
    assert [p["pass"] for p in prune] == ["structured_prune", "distill", "quantize"]
    assert prune[0]["ratio"] == 0.75 and prune[0]["importance"] == "l1" and prune[0]["round_to"] == 1
    assert (prune[1]["epochs"], prune[1]["max_steps"], prune[1]["lr"]) == (3, 30, 0.01)
    assert space.passes(space.candidates[1], 1)[1]["epochs"] == 10
    # The per-layer float fallback of the quantize budget is left to the last rung: it costs a quantization per layer.
    assert prune[2]["max_metric_drop"] is None and space.passes(space.candidates[1], 1)[2]["max_metric_drop"] == 0.02


def test_flags_override_the_section_and_quantize_none_drops_variants():
    spec = parse_search_spec({"max_drop": 2.0, "quantize": ["int8_static"]}, {"max_drop": 0.5, "quantize": ["none"]})
    space = build_space(residual_cnn(), load_recipe({}), spec, 0.005)
    assert spec.max_drop == 0.5 and space.variants == [] and space.keep_fp32
    assert all(p["pass"] != "quantize" for c in space.candidates for p in space.passes(c, 0))


def test_distillation_is_scaled_never_below_one_epoch():
    assert scaled_distill({"pass": "distill", "epochs": 15}, 0.2)["epochs"] == 3
    assert scaled_distill({"pass": "distill", "epochs": 2}, 0.1)["epochs"] == 1


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"prune_ratio": [0.5]}, "search.prune_ratio: unknown key 'prune_ratio'; did you mean 'prune_ratios'?"),
        ({"prune_ratios": [1.5]}, "search.prune_ratios[0]: 1.5 is out of range"),
        ({"distill_fractions": [1.0, 0.5]}, "distill_fractions must be strictly ascending"),
        ({"quantize": ["int3"]}, "search.quantize[0]:"),
        ({"prune_ratios": [0.5, 0.5]}, "lists a value twice"),
        ({"objective": "speed"}, "search.objective:"),
    ],
)
def test_a_bad_search_section_is_one_clear_line(section, message):
    with pytest.raises(RecipeError) as caught:
        load_recipe({"search": section})
    assert len(caught.value.problems) == 1 and message in caught.value.problems[0]


def test_run_ignores_the_search_section_and_its_dump_leaves_it_out_when_absent():
    assert "search" not in load_recipe({}).to_dict()
    assert load_recipe({"search": {"max_drop": 0.5}}).to_dict()["search"]["max_drop"] == 0.5


def test_gpt2_conv1d_ffn_layers_get_the_ffn_axis():
    from tests.tiny_models import tiny_gpt2

    space = build_space(tiny_gpt2(), load_recipe({}), SearchSpec(), 0.01)
    assert space.ffn_pattern == r"re:.*mlp\.c_fc$"
    assert {c.ffn_ratio for c in space.candidates} == {0.0, 0.25, 0.5}


def test_settings_that_would_override_the_search_are_left_out():
    recipe = load_recipe(
        {
            "passes": [
                {"pass": "structured_prune", "macs_reduction": 0.5},
                {"pass": "quantize", "budget_split": "eval", "max_metric_drop": 0.01},
            ]
        }
    )
    space = build_space(residual_cnn(), recipe, SearchSpec(), 0.01)
    prune = next(p for p in space.passes(next(c for c in space.candidates if c.ratio == 0.5), 1) if "ratio" in p)
    assert prune["ratio"] == 0.5 and prune.get("macs_reduction") is None  # a MACs target would set every ratio
    assert space.base["quantize"]["budget_split"] == "validation"  # the eval split never chooses
