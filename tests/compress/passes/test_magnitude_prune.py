"""magnitude_prune: exact sparsity, the smallest weights go, scopes and exclusions."""

import pytest
import torch

from compress.context import Context
from compress.passes.magnitude_prune import PRUNABLE, MagnitudePruneConfig, magnitude_prune
from tests.tiny_models import TINY_ARCHS


def apply(model, **params):
    ctx = Context(data=None, example_inputs=None, teacher=model, evaluate=lambda m: 0.0)
    return magnitude_prune(model, MagnitudePruneConfig(**params), ctx), ctx._record


@pytest.mark.parametrize("arch", list(TINY_ARCHS))
@pytest.mark.parametrize("sparsity", [0.3, 0.8])
def test_layer_scope_gives_exact_sparsity_in_every_layer(arch, sparsity):
    model = TINY_ARCHS[arch][0]()
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
    model, record = apply(model, sparsity=sparsity)
    for name, module in model.named_modules():
        if name in before:
            weight = module.weight.detach()
            zeros = int((weight == 0).sum())
            assert zeros == round(sparsity * weight.numel())
            assert record["layer_sparsity"][name] == pytest.approx(zeros / weight.numel(), abs=1e-6)
            kept = before[name][weight != 0].abs()
            dropped = before[name][weight == 0].abs()
            assert dropped.max() <= kept.min()  # the smallest magnitudes were removed
            assert torch.equal(weight[weight != 0], before[name][weight != 0])  # the rest untouched


def test_global_scope_uses_one_threshold():
    model, record = apply(TINY_ARCHS["mlp"][0](), sparsity=0.5, scope="global")
    weights = [model.fc1.weight.detach(), model.fc2.weight.detach()]
    total = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) == round(0.5 * total)
    # Layers end with different sparsities, unlike the layer scope.
    assert record["layer_sparsity"]["fc1"] != record["layer_sparsity"]["fc2"]


def test_excluded_layer_stays_dense():
    model = TINY_ARCHS["residual_cnn"][0]()
    head = model.head.weight.detach().clone()
    model, record = apply(model, sparsity=0.9, exclude=["head"])
    assert torch.equal(model.head.weight, head)
    assert "head" not in record["layer_sparsity"]


def test_zero_sparsity_is_lossless():
    model = TINY_ARCHS["mlp"][0]()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model, _ = apply(model, sparsity=0.0)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
