"""distill: the losses' arithmetic, recovery towards the teacher, best epoch kept, budgets."""

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from compress.core.errors import InputError, SelectionError
from compress.engine.context import Context
from compress.models.data import TaskData
from compress.passes.distill import DistillConfig, distill, logits_loss
from compress.recipe.schema import ModelSpec
from tests.tiny_models import mlp, vector_data


def teacher_labelled_data():
    """Batches labelled by the teacher, so accuracy measures agreement with it."""
    teacher = mlp()
    data = vector_data(batches=6, batch_size=16)
    batches = [(x, teacher(x).argmax(-1)) for x, _ in data.eval]
    return teacher, TaskData(eval=batches, train=batches)


def agreement(model, data):
    with torch.no_grad():
        return sum(int((model(x).argmax(-1) == y).sum()) for x, y in data.eval) / sum(len(y) for _, y in data.eval)


def damaged(model):
    with torch.no_grad():
        model.fc1.weight.add_(torch.randn_like(model.fc1.weight) * 0.5)
    return model


def run_distill(student, entered, data, evaluate=None, **params):
    ctx = Context(data, data.eval[0][0], entered, evaluate or (lambda m, split="eval": agreement(m, data)))
    return distill(student, DistillConfig(**params), ctx), ctx.facts


def test_logits_loss_is_t_squared_kl_mixed_with_cross_entropy():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1])
    config = DistillConfig(temperature=2.0, alpha=0.25)
    p_teacher = F.softmax(teacher / 2, -1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(student / 2, -1))).sum(-1).mean() * 4
    expected = 0.25 * kl + 0.75 * F.cross_entropy(student, labels)
    torch.testing.assert_close(logits_loss(student, teacher, labels, config), expected)
    with pytest.raises(InputError, match="carry no integer labels"):
        logits_loss(student, teacher, None, config)
    soft_only = DistillConfig(temperature=2.0, alpha=1.0)
    torch.testing.assert_close(logits_loss(student, teacher, None, soft_only), kl)


def test_logits_distillation_recovers_agreement_with_the_teacher():
    teacher, data = teacher_labelled_data()
    student = damaged(mlp())
    before = agreement(student, data)
    student, record = run_distill(student, teacher, data, epochs=30, lr=1e-2, warmup_ratio=0.0)
    assert before < 0.8
    assert agreement(student, data) >= 0.95
    assert record["best_metric"] == agreement(student, data)


DISTANCES = {
    "embedding_mse": lambda s, t: F.mse_loss(s, t),
    "embedding_cosine": lambda s, t: (1 - F.cosine_similarity(s, t, dim=-1)).mean(),
}


@pytest.mark.parametrize("loss", list(DISTANCES))
def test_embedding_distillation_pulls_outputs_to_the_teacher(loss):
    teacher, data = teacher_labelled_data()

    def distance(model, split="eval"):
        with torch.no_grad():
            return float(sum(DISTANCES[loss](model(x), teacher(x)) for x, _ in data.eval))

    student = damaged(mlp())
    before = distance(student)
    student, _ = run_distill(
        student, teacher, data, lambda m, split="eval": -distance(m), loss=loss, epochs=40, lr=1e-2, warmup_ratio=0.0
    )
    assert distance(student) < before / 5


def test_best_epoch_is_kept_and_patience_stops_training():
    teacher, data = teacher_labelled_data()
    scores = iter([0.5, 0.9, 0.7, 0.6, 0.95])
    snapshots = []

    def evaluate(model, split="eval"):
        snapshots.append(copy.deepcopy(model.state_dict()))
        return next(scores)

    student, record = run_distill(damaged(mlp()), teacher, data, evaluate, epochs=10, patience=2, lr=1e-2)
    assert record["best_epoch"] == 1 and record["best_metric"] == 0.9
    assert len(record["epochs"]) == 3  # epochs 2 and 3 did not improve: stopped
    assert record["stopped_by"] == "early_stopping" and (record["steps"], record["planned_steps"]) == (18, 60)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in snapshots[1].items())


def test_step_budget_and_validation_split_are_used():
    teacher, data = teacher_labelled_data()
    data.validation = data.eval[:2]
    splits = []

    def evaluate(model, split="eval"):
        splits.append(split)
        return 0.0

    _, record = run_distill(damaged(mlp()), teacher, data, evaluate, epochs=10, max_steps=4)
    assert record["steps"] == 4 and len(record["epochs"]) == 1
    assert record["planned_steps"] == 4 and record["stopped_by"] == "completed"
    assert set(splits) == {"validation"} and record["selected_on"] == "validation"


def test_a_pass_stopped_by_time_records_planned_and_run_steps_and_the_report_warns():
    from compress.engine.stages import StageResult
    from export.report.build import stage_warnings

    teacher, data = teacher_labelled_data()
    # Any step takes longer than a nanosecond: the time budget ends training after its first step.
    _, record = run_distill(damaged(mlp()), teacher, data, lambda m, split="eval": 0.0, epochs=10, max_seconds=1e-9)
    assert (record["steps"], record["planned_steps"], record["stopped_by"]) == (1, 60, "max_seconds")
    stage = StageResult(2, "distill", "distill", {}, "accuracy", 0.5, 10, 10, 1.0, "f", record=record)
    assert stage_warnings([stage]) == [
        "distill: stopped by time after 1 of 60 steps: this result depends on machine load"
    ]


def test_teacher_from_a_checkpoint(tmp_path):
    teacher, data = teacher_labelled_data()
    path = tmp_path / "teacher.safetensors"
    save_file(teacher.state_dict(), str(path))
    spec = ModelSpec(factory="tests.tiny_models:mlp", checkpoint=str(path))
    student, _ = run_distill(damaged(mlp()), damaged(mlp()), data, teacher=spec, epochs=30, lr=1e-2)
    assert agreement(student, data) >= 0.95


def test_missing_train_split_is_an_input_error():
    teacher, data = teacher_labelled_data()
    data.train = None
    with pytest.raises(InputError, match="no 'train' split"):
        run_distill(mlp(), teacher, data)


@pytest.mark.parametrize("keep", [True, False])
def test_pruned_zeros_stay_zero_unless_told_otherwise(keep):
    teacher, data = teacher_labelled_data()
    student = mlp()
    with torch.no_grad():
        student.fc1.weight[student.fc1.weight.abs() < 0.15] = 0
    zeros = student.fc1.weight == 0
    student, record = run_distill(student, teacher, data, epochs=3, lr=1e-2, keep_sparsity=keep)
    assert set(student.state_dict()) == set(teacher.state_dict())
    if keep:
        assert torch.equal(student.fc1.weight == 0, zeros)
        assert record["sparse_layers_kept"] == ["fc1"]
    else:
        assert int((student.fc1.weight == 0).sum()) < int(zeros.sum()) // 10


def int8_quantized(model):
    """``model`` with fc1/fc2 replaced by bitsandbytes LLM.int8 layers (CPU)."""
    import bitsandbytes as bnb

    for name in ("fc1", "fc2"):
        dense = getattr(model, name)
        layer = bnb.nn.Linear8bitLt(dense.in_features, dense.out_features, has_fp16_weights=False)
        layer.load_state_dict(dense.state_dict())
        setattr(model, name, layer.to("cpu"))
    return model


def test_after_bitsandbytes_int8_biases_train_and_weights_stay():
    teacher, data = teacher_labelled_data()

    def distance(model, split="eval"):
        with torch.no_grad():
            return float(sum(F.mse_loss(model(x), teacher(x)) for x, _ in data.eval))

    student = int8_quantized(damaged(mlp()))
    frozen = {n: p.detach().clone() for n, p in student.named_parameters() if not p.is_floating_point()}
    before = distance(student)
    student, _ = run_distill(
        student, teacher, data, lambda m, split="eval": -distance(m), epochs=20, lr=1e-2, warmup_ratio=0.0
    )
    assert all(torch.equal(p, frozen[n]) for n, p in student.named_parameters() if n in frozen)
    assert len(frozen) == 2
    assert distance(student) < 0.9 * before


def test_interrupted_distillation_continues_from_its_last_epoch(tmp_path):
    teacher, data = teacher_labelled_data()
    params = {"epochs": 4, "lr": 1e-2, "warmup_ratio": 0.0}

    def run(scratch, evaluate):
        ctx = Context(data, data.eval[0][0], teacher, evaluate, scratch_dir=scratch)
        return distill(damaged(mlp()), DistillConfig(**params), ctx), ctx.facts

    calls = []

    def interrupt_in_epoch_two(model, split="eval"):
        calls.append(split)
        if len(calls) == 3:  # the initial evaluation, epoch 1, then epoch 2
            raise KeyboardInterrupt
        return agreement(model, data)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "scratch", interrupt_in_epoch_two)
    assert (tmp_path / "scratch" / "distill.pt").is_file()
    resumed, record = run(tmp_path / "scratch", lambda m, split="eval": agreement(m, data))
    assert [e["epoch"] for e in record["epochs"]] == [1, 2, 3, 4]
    uninterrupted, _ = run(None, lambda m, split="eval": agreement(m, data))
    assert all(torch.equal(v, uninterrupted.state_dict()[k]) for k, v in resumed.state_dict().items())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is missing")
def test_cuda_without_a_cuda_device_is_a_clear_error():
    teacher, data = teacher_labelled_data()
    with pytest.raises(InputError, match="device 'cuda' was asked for but no CUDA device is available"):
        run_distill(mlp(), teacher, data, device="cuda")


def test_auto_device_trains_where_cuda_is_and_returns_the_model_to_cpu():
    teacher, data = teacher_labelled_data()
    student, record = run_distill(damaged(mlp()), teacher, data, epochs=1)
    assert record["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert {p.device.type for p in student.parameters()} == {"cpu"}


def narrowed(model, keep=16):
    """``model`` with fc1 cut to its first ``keep`` neurons, as structured pruning leaves it."""
    with torch.no_grad():
        fc1, fc2 = torch.nn.Linear(12, keep), torch.nn.Linear(keep, 4)
        fc1.weight.copy_(model.fc1.weight[:keep])
        fc1.bias.copy_(model.fc1.bias[:keep])
        fc2.weight.copy_(model.fc2.weight[:, :keep])
        fc2.bias.copy_(model.fc2.bias)
    model.fc1, model.fc2 = fc1, fc2
    return model


def test_feature_distillation_projects_narrower_layers_and_matches_them():
    teacher, data = teacher_labelled_data()
    features = [{"student": "fc1", "loss": "mse", "weight": 1.0}]
    student, record = run_distill(
        narrowed(mlp()), teacher, data, output_weight=0.0, features=features, epochs=30, lr=1e-2, warmup_ratio=0.0
    )
    assert record["feature_projections"] == {"fc1": "fc1"}
    losses = [e["loss"] for e in record["epochs"]]
    assert losses[-1] < 0.3 * losses[0]
    assert student.fc1.out_features == 16  # the projection is not part of the model


def test_feature_and_output_losses_combine_on_conv_maps_without_projection():
    from tests.tiny_models import image_data, residual_cnn

    data, teacher = image_data(), residual_cnn()
    student = residual_cnn()
    with torch.no_grad():
        student.conv.weight.mul_(-1)
    features = [{"student": "stem", "loss": "cosine", "weight": 0.5}, {"student": "bn", "teacher": "bn"}]
    _, record = run_distill(
        student,
        teacher,
        data,
        lambda m, split="eval": 0.0,
        features=features,
        epochs=10,
        lr=1e-2,
        warmup_ratio=0.0,
        loss="embedding_mse",
    )
    assert record["feature_projections"] == {}
    assert record["epochs"][-1]["loss"] < 0.5 * record["epochs"][0]["loss"]


def test_unknown_feature_layer_is_named():
    teacher, data = teacher_labelled_data()
    with pytest.raises(SelectionError, match="distill.features: the student has no module 'fc9'"):
        run_distill(mlp(), teacher, data, features=[{"student": "fc9"}])


def test_integer_weights_with_zero_codes_are_not_masked():
    teacher, data = teacher_labelled_data()
    student = int8_quantized(mlp())
    student.fc1.weight.data[:, :6] = 0  # many zero codes, as small weights quantize to
    frozen = student.fc1.weight.detach().clone()
    student, record = run_distill(student, teacher, data, epochs=1)
    assert record["sparse_layers_kept"] == []
    assert torch.equal(student.fc1.weight, frozen)
