"""structured_prune's round_to: pruned widths are multiples of 8 by default, exact with 1."""

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from compress.engine.context import Context
from compress.models.data import take_rows
from compress.passes.structured_prune import PruneError, StructuredPruneConfig, structured_prune
from compress.pruning.attention import attention_modules
from compress.recipe.schema import ParitySpec
from export.onnx.exporter import to_onnx
from export.onnx.runtime import make_session
from export.onnx.validate import validate
from tests.compress.passes.test_structured_prune_transformers import ARCHS, FFN, FFN_FIELD
from tests.tiny_models import image_data, mlp, seeded, tiny_bert, token_data, vector_data
from tests.tolerances import FP32_EXPORT_ATOL


class OddWidthCNN(nn.Module):
    """Convolutions 45, 27, 11 and 6 wide: a 30% cut leaves 31, 18, 7 and 4, as it did on real CNNs."""

    def __init__(self, widths=(45, 27, 11, 6), groups=1):
        super().__init__()
        layers, c_in = [], 1
        for i, width in enumerate(widths):
            conv = nn.Conv2d(c_in, width, 3, padding=1, groups=groups if i else 1)
            layers += [conv, nn.BatchNorm2d(width), nn.ReLU()]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 4)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


odd_width_cnn = seeded(OddWidthCNN)


def conv_widths(model):
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def prune(model, data, **params):
    ctx = Context(data, data.eval[0][0], copy.deepcopy(model), lambda m: 0.0)
    return structured_prune(model, StructuredPruneConfig(**params), ctx), ctx.facts


def test_default_rounds_every_pruned_width_to_a_multiple_of_8(tmp_path):
    """31 -> 32, 18 -> 16, 7 -> 8; the 6-wide layer, not wider than 8, stays whole. Parity holds."""
    data = image_data()
    model, record = prune(odd_width_cnn(), data, ratio=0.3)
    assert record["round_to"] == 8
    assert conv_widths(model) == [32, 16, 8, 6]
    assert record["widths"]["head"] == [4, 6]
    pruned = to_onnx(model, take_rows(data.eval[0][0], 2), tmp_path / "pruned.onnx")
    parity = ParitySpec(atol=FP32_EXPORT_ATOL["residual_cnn"], min_cosine=0.9999)
    validate(model, make_session(pruned.path), [b[0] for b in data.eval], parity, classifier=True)


def test_round_to_1_is_torch_pruning_s_own_cut():
    """round_to 1 keeps today's behaviour: the very cut Torch-Pruning makes on its own."""
    ours, record = prune(odd_width_cnn(), image_data(), ratio=0.3, round_to=1)
    theirs = odd_width_cnn()
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.BasePruner(
        theirs, image_data().eval[0][0], importance=importance, pruning_ratio=0.3, ignored_layers=[theirs.head]
    )
    pruner.step()
    assert record["round_to"] == 1
    assert conv_widths(ours) == conv_widths(theirs) == [31, 18, 7, 4]  # int(width * 0.7)
    assert all(torch.equal(value, theirs.state_dict()[key]) for key, value in ours.state_dict().items())


def test_rounding_keeps_the_channels_a_cut_to_that_width_keeps():
    """22 kept, rounded up to 24, are the 24 channels that ratio 0.25 keeps: the ranking is the criterion's."""
    rounded, _ = prune(mlp(), vector_data(), ratio=0.3, round_to=8)
    exact, _ = prune(mlp(), vector_data(), ratio=0.25, round_to=1)
    assert rounded.fc1.out_features == exact.fc1.out_features == 24
    assert all(torch.equal(value, exact.state_dict()[key]) for key, value in rounded.state_dict().items())


def test_rounding_never_empties_and_a_narrow_layer_is_not_refused():
    """At 0.9, 45/27/11 would keep 4/2/1: one multiple (8) each; the 6-wide layer, left whole when
    rounding, would be emptied at round_to 1 and is refused there."""
    model, _ = prune(odd_width_cnn(), image_data(), ratio=0.9, round_to=8)
    assert conv_widths(model) == [8, 8, 8, 6]
    with pytest.raises(PruneError, match=r"ratio 0.9 would remove every channel of 1 group.*'features.9'.*0.8333"):
        prune(odd_width_cnn(), image_data(), ratio=0.9, round_to=1)


def test_a_ratio_that_empties_a_group_is_refused_with_rounding_too():
    """Rounding comes after Torch-Pruning's choice, so it cannot rescue a group the ratio empties."""
    from compress.demo.digits import DigitsResNet

    x = torch.randn(2, 1, 8, 8)

    def pruned(ratio):
        model = DigitsResNet()
        config = StructuredPruneConfig(ratio=ratio, round_to=8)
        structured_prune(model, config, Context(None, x, copy.deepcopy(model), None))
        return model

    with pytest.raises(PruneError, match=r"ratio 0.97 would remove every channel.*keeps one is 0.9687"):
        pruned(0.97)
    assert set(conv_widths(pruned(0.9687))) == {8}  # 1, 2 and 4 channels kept, each rounded up to 8


def test_grouped_convolutions_round_their_total_width():
    """Groups of 4: 12 channels per group keep int(12 * 0.6) = 7, rounded to 8 per group, 32 in all."""
    model, _ = prune(odd_width_cnn(widths=(48, 48), groups=4), image_data(), ratio=0.4, round_to=8)
    assert conv_widths(model) == [32, 32]
    model, _ = prune(odd_width_cnn(widths=(48, 48), groups=4), image_data(), ratio=0.4, round_to=1)
    assert conv_widths(model) == [28, 28]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_ffn_layer_ratios_are_rounded_and_heads_stay_whole(arch):
    """FFN 64 at 0.3 keeps 44 (45 for GPT-2's Conv1D), rounded to 48; q/k/v keep whole heads (3 x 8 = 24)
    even at round_to 16, which never splits a head."""
    factory, data_factory = ARCHS[arch]
    data = data_factory()
    params = dict(ratio=0.0, head_ratio=0.25, layer_ratios={FFN[arch]: 0.3})
    _, record = prune(factory(), data, **params, round_to=1)
    assert record["config_updates"][FFN_FIELD[arch]] in (44, 45)
    model, record = prune(factory(), data, **params, round_to=16)
    assert record["config_updates"][FFN_FIELD[arch]] == 48
    for name, (module, layout) in attention_modules(model).items():
        assert len(record["removed_heads"][name]) == 1
        assert {getattr(module, p).weight.numel() // 32 // layout.sections for p in layout.projections} == {24}


def test_round_to_is_validated():
    from compress.core.errors import RecipeError
    from compress.recipe.schema import load_recipe

    with pytest.raises(RecipeError, match="round_to"):
        load_recipe({"passes": [{"pass": "structured_prune", "round_to": "fast"}]})
    with pytest.raises(RecipeError, match="round_to"):
        load_recipe({"passes": [{"pass": "structured_prune", "round_to": 0}]})
    assert load_recipe({"passes": [{"pass": "structured_prune"}]}).passes[0].round_to == "auto"


def test_ffn_widths_go_to_the_nearest_multiple():
    """BERT FFN 64: 0.3 keeps 44 -> 48; 0.2 keeps 51 -> 48; 0.1 keeps 57 -> 64 at 16, so the layer stays whole."""
    for ratio, multiple, expected in [(0.3, 16, 48), (0.3, "auto", 48), (0.2, 8, 48), (0.2, 16, 48), (0.1, 16, 64)]:
        params = dict(ratio=0.0, layer_ratios={FFN["tiny_bert"]: ratio}, round_to=multiple)
        _, record = prune(tiny_bert(), token_data(), **params)
        assert record["config_updates"].get("intermediate_size", 64) == expected, (ratio, multiple)
