"""magnitude_prune: exact sparsity, the smallest weights go, scopes and exclusions."""

import pytest
import torch

from compress.core.errors import RecipeError, SelectionError
from compress.engine.context import Context
from compress.passes.magnitude_prune import PRUNABLE, MagnitudePruneConfig, cubic_schedule, magnitude_prune
from compress.recipe.schema import parse_recipe
from tests.tiny_models import TINY_ARCHS, vector_data


def apply(model, **params):
    ctx = Context(data=None, example_inputs=None, teacher=model, evaluate=lambda m: 0.0)
    return magnitude_prune(model, MagnitudePruneConfig(**params), ctx), ctx.facts


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


def test_cubic_schedule_rises_fast_then_slowly_to_the_target():
    schedule = cubic_schedule(0.8, 4)
    assert schedule == pytest.approx([0.8 * (1 - (1 - k / 4) ** 3) for k in (1, 2, 3, 4)])
    assert schedule[-1] == pytest.approx(0.8)
    steps = [b - a for a, b in zip([0.0, *schedule], schedule)]
    assert steps == sorted(steps, reverse=True)


def test_gradual_pruning_with_finetuning_keeps_masks_and_beats_one_shot():
    data = vector_data(batches=6, batch_size=16)
    teacher = TINY_ARCHS["mlp"][0]()

    def distance(model):
        with torch.no_grad():
            return float(sum(torch.nn.functional.mse_loss(model(x), teacher(x)) for x, _ in data.eval))

    ctx = Context(data, data.eval[0][0], teacher, lambda m, split="eval": 0.0)
    config = MagnitudePruneConfig(sparsity=0.8, steps=4, finetune_steps=30, finetune_lr=1e-2)
    gradual = magnitude_prune(TINY_ARCHS["mlp"][0](), config, ctx)
    one_shot, _ = apply(TINY_ARCHS["mlp"][0](), sparsity=0.8)
    for layer in (gradual.fc1, gradual.fc2):
        assert int((layer.weight == 0).sum()) == round(0.8 * layer.weight.numel())
    assert set(gradual.state_dict()) == set(teacher.state_dict())  # masks baked, no weight_orig left
    assert ctx.facts["schedule"] == pytest.approx(cubic_schedule(0.8, 4))
    assert distance(gradual) < 0.5 * distance(one_shot)


@pytest.mark.parametrize("arch", ["mlp", "residual_cnn"])
def test_n_m_pattern_keeps_n_of_every_m_inputs(arch):
    model, record = apply(TINY_ARCHS[arch][0](), pattern="2:4", exclude=["re:stem.*"] if arch != "mlp" else [])
    for name, sparsity in record["layer_sparsity"].items():
        weight = model.get_submodule(name).weight.detach().movedim(1, -1)
        assert torch.equal((weight.reshape(-1, 4) != 0).sum(1), torch.full((weight.numel() // 4,), 2))
        assert sparsity == 0.5


def test_n_m_pattern_names_a_layer_whose_width_does_not_divide():
    with pytest.raises(
        SelectionError, match=r"layer 'stem\.0' has 1 inputs, not a multiple of 4 .*exclude: \['stem\.0'\]"
    ):
        apply(TINY_ARCHS["residual_cnn"][0](), pattern="2:4")


def test_invalid_pattern_is_a_recipe_error():
    with pytest.raises(RecipeError, match=r"pattern.*'N:M' with 0 < N < M <= 64.*'4:2'"):
        parse_recipe({"passes": [{"pass": "magnitude_prune", "pattern": "4:2"}]})


@pytest.mark.parametrize("arch", list(TINY_ARCHS))
def test_the_parameters_keep_their_order(arch):
    # prune.remove registers ``weight`` again, last: the exported graph would list its initializers in
    # another order than a resumed run's, which loads the stage into a module never masked (issue 29).
    model = TINY_ARCHS[arch][0]()
    before = [name for name, _ in model.named_parameters()]
    model, _ = apply(model, sparsity=0.5)
    assert [name for name, _ in model.named_parameters()] == before


def test_a_run_resumed_at_each_stage_boundary_exports_the_same_bytes(tmp_path):
    """Killed after each completed stage (the later stages and every output gone), then rerun: each
    ONNX artifact is byte-identical to the uninterrupted run's."""
    import hashlib
    import shutil

    import compress
    from tests.tiny_models import mlp

    recipe = {
        "name": "resume",
        "passes": [{"pass": "magnitude_prune", "sparsity": 0.5}],
        "export": {"exporter": "torchscript"},
    }

    def digests(out):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("artifacts/*.onnx"))}

    clean = tmp_path / "clean"
    compress.run(mlp(), recipe, vector_data(), out_dir=clean, report=False)
    assert set(digests(clean)) == {"baseline.onnx", "compressed.onnx"}
    for kept in (0, 1):
        killed = shutil.copytree(clean, tmp_path / f"killed-after-{kept}")
        for stage in killed.glob("stages/*"):
            if int(stage.name[:2]) > kept:
                shutil.rmtree(stage)
        shutil.rmtree(killed / "artifacts")
        result = compress.run(mlp(), recipe, vector_data(), out_dir=killed, report=False)
        assert [s.resumed for s in result.stages][: kept + 1] == [True] * (kept + 1)
        assert digests(killed) == digests(clean), f"resumed after stage {kept}"
