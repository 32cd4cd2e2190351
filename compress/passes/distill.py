"""distill: knowledge distillation from a teacher, to recover accuracy after pruning or quantization.

The teacher is the model as it entered the pipeline unless the recipe names one.
Losses, by ``loss``:
- ``logits``: KL divergence of temperature-softened outputs, scaled by T² (Hinton et
  al. 2015), mixed with cross-entropy on hard labels by ``alpha`` when batches carry labels;
- ``embedding_mse`` / ``embedding_cosine``: for encoders on unlabelled text, the student
  output is pulled towards the teacher's (Reimers & Gurevych 2020).
Layer-wise (``layerwise``, see ``compress.training.layerwise``): for a transformer whose blocks were
pruned or dropped, every student block's output is pulled to its mapped teacher block's
(MSE) and its self-attention relations to the teacher's (MiniLMv2), on top of the output
loss. ``auto`` turns this on when the blocks are found, hold attention and changed shape,
and no ``features`` are named by hand; CNNs and unpruned models keep the output loss only.
Training: AdamW, linear warm-up then cosine decay, gradient clipping, evaluation on the
validation split after every epoch, the best epoch's weights kept, early stopping, and a
checkpoint after every epoch so that a rerun continues an interrupted pass. Under
torchrun the model is wrapped in DistributedDataParallel and each rank trains on its
shard of the train batches; losses are averaged across ranks.
"""

import os
import time
from enum import Enum
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from compress.core import log
from compress.core.config import PassConfig
from compress.core.distributed import average_gradients, barrier, is_main, mean_across_ranks, shard, world_size
from compress.core.errors import InputError
from compress.core.io import write_atomic
from compress.models.data import call_model, first_tensor, to_device, training_inputs
from compress.models.evaluate import IGNORE_INDEX
from compress.models.select import select_modules
from compress.recipe.registry import register_pass
from compress.recipe.schema import ModelSpec
from compress.training.feature_distill import FeatureLoss, FeatureMatch, taps
from compress.training.layerwise import RelationLoss, choose
from compress.training.loop import (
    frozen,
    restore_trainable_state,
    trainable_state,
    training_progress,
    warmup_cosine,
    zeros_kept,
)
from compress.training.weight_rounding import rounded_weights


class Device(str, Enum):
    auto = "auto"  # CUDA when available, else CPU
    cpu = "cpu"
    cuda = "cuda"


class DistillLoss(str, Enum):
    logits = "logits"
    embedding_mse = "embedding_mse"
    embedding_cosine = "embedding_cosine"


class Layerwise(str, Enum):
    auto = "auto"  # on for structurally pruned / depth-reduced transformers without hand-named features
    on = "on"
    off = "off"


class DistillConfig(PassConfig):
    """Args:
    loss: logits, embedding_mse or embedding_cosine: the loss on the model outputs.
    output_weight: weight of that output loss in the total (0 = features only).
    features: hidden layers to match (``{student, teacher, loss: mse|cosine, weight}``), with a
        learned projection where pruning made the student narrower.
    layerwise: auto, on or off: hidden-state and attention-relation losses on every mapped block
        (auto: on for a pruned or depth-reduced transformer when no ``features`` are named).
    hidden_weight: weight of the mean per-block hidden-state MSE (default 1.0).
    relation_weight: weight of the mean per-block Q-Q/K-K/V-V relation KL (default 0.1), over as many
        relation heads as divide every q/k/v width of both models (the student's heads per block, lowered).
    temperature: softening of logits (``logits`` loss).
    alpha: share of the soft (teacher) loss; the rest is cross-entropy on labels, when present.
    epochs: training length in epochs; with ``max_steps`` and ``max_seconds``, whichever ends first.
    max_steps: training length in optimizer steps (none: no limit); whichever limit ends first.
    max_seconds: training length in wall-clock seconds (none: no limit); whichever limit ends first.
    lr: peak learning rate of AdamW, reached after the warm-up and decayed on a cosine.
    weight_decay: AdamW's decoupled weight decay.
    warmup_ratio: share of the steps spent warming the learning rate up from zero.
    max_grad_norm: gradients are clipped to this global norm (none: no clipping).
    patience: stop after this many epochs without a better validation metric.
    teacher: another model (factory/checkpoint) instead of the model as it entered the pipeline.
    keep_sparsity: weights that are exactly zero (pruned) stay zero during training.
    frozen: modules (names or ``re:`` patterns) whose parameters training leaves as they are.
    int4_aware: Linear layers (names or ``re:`` patterns) trained through their 4-bit rounding on
        ``int4_grid`` in blocks of ``int4_block_size`` inputs (straight-through gradient) and left
        rounded, so that a later ``block_minimum`` int4 pass packs exactly the trained model
        (``compress.training.weight_rounding``).
    int4_block_size: inputs per block of that rounding: the int4 pass's ``block_size`` (default 32).
    int4_grid: ``block_minimum`` (each block's minimum + 16 steps, as Q4_1 checkpoints are stored) or
        ``symmetric`` (k x max|w|/7, k in -7..7: packed by an int4 pass with ``symmetric: true`` as
        one MatMulNBits per weight, no zero points or offsets, the fastest layout on CPU).
    int4_inputs: ``float``, or ``int8``: the ``int4_aware`` layers' inputs are rounded too, per block, as
        MatMulNBits rounds them at ``accuracy_level`` 4 (its fast CPU kernel), so the trained model is
        what the level-4 artifact computes.
    device: auto, cpu or cuda (under torchrun, the rank's local GPU); the model returns to the CPU after.
    mixed_precision: bf16 autocast for the forward passes on CUDA (no effect on CPU).

    After bitsandbytes quantization the quantized weights stay frozen and the float parameters
    (biases, norms, unquantized layers) are trained. Tested with LLM.int8 (Linear8bitLt) on CPU;
    bitsandbytes 0.50 repacks Linear4bit weights for CPU inference in eval mode, so 4-bit layers
    cannot be trained again on CPU after an evaluation.

    The defaults of ``hidden_weight`` and ``relation_weight`` make each term about the size of the
    output loss on an encoder: at the start of the minilm-full distillation (a third of the heads and
    half the FFN removed) the output MSE is 0.066, the mean block MSE 0.107 and the mean relation KL 0.40.
    """

    loss: DistillLoss = DistillLoss.logits
    output_weight: float = Field(1.0, ge=0.0, le=1000.0)
    features: list[FeatureMatch] = Field(default_factory=list)
    layerwise: Layerwise = Layerwise.auto
    hidden_weight: float = Field(1.0, ge=0.0, le=1000.0)
    relation_weight: float = Field(0.1, ge=0.0, le=1000.0)
    temperature: float = Field(4.0, gt=0.0, le=100.0)
    alpha: float = Field(0.7, ge=0.0, le=1.0)
    epochs: int = Field(5, ge=1, le=100_000)
    max_steps: int | None = Field(None, ge=1)
    max_seconds: float | None = Field(None, gt=0.0)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    patience: int | None = Field(None, ge=1)
    teacher: ModelSpec | None = None
    keep_sparsity: bool = True
    frozen: list[str] = Field(default_factory=list)
    int4_aware: list[str] = Field(default_factory=list)
    int4_block_size: int = Field(32, ge=8, le=4096)
    int4_grid: Literal["block_minimum", "symmetric"] = "block_minimum"
    int4_inputs: Literal["float", "int8"] = "float"
    device: Device = Device.auto
    mixed_precision: bool = True


def _labels(batch) -> torch.Tensor | None:
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor):
        return None if batch[1].is_floating_point() else batch[1]
    return None


def logits_loss(student, teacher, labels, config: DistillConfig) -> torch.Tensor:
    """Per row, or per token for sequence logits ``[B, T, V]`` (a causal LM's, already shifted so that
    position t predicts label t): KL and cross-entropy averaged over the tokens whose label is not -100."""
    t = config.temperature
    kl = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="none", log_target=True)
    kl = kl.sum(-1)  # per row, or per token
    if student.dim() > 2 and labels is not None and labels.shape == kl.shape:
        scored = labels != IGNORE_INDEX
        soft = (kl * scored).sum() / scored.sum().clamp_min(1) * t * t
    else:
        soft = kl.mean() * t * t
    if labels is None:
        if config.alpha < 1.0:
            raise InputError(
                f"distill: alpha {config.alpha} mixes in cross-entropy on labels, but the train batches carry "
                "no integer labels; return (inputs, labels) batches from the data factory, or set alpha: 1.0"
            )
        return soft
    hard = F.cross_entropy(student.flatten(0, -2), labels.flatten(), ignore_index=IGNORE_INDEX)
    return config.alpha * soft + (1 - config.alpha) * hard


def next_token_targets(model: torch.nn.Module, student, teacher, labels):
    """A causal LM's logits at t predict the label at t + 1 (Hugging Face's labels are the input ids):
    drop the last position of the logits and the first label; other models' outputs as they are."""
    if labels is None or student.dim() < 3 or not _generates(model):
        return student, teacher, labels
    return student[:, :-1], teacher[:, :-1], labels[:, 1:]


def _generates(model: torch.nn.Module) -> bool:
    can_generate = getattr(model, "can_generate", None)
    encoder_decoder = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
    return bool(callable(can_generate) and can_generate() and not encoder_decoder)


LOSSES = {
    DistillLoss.logits.value: logits_loss,
    DistillLoss.embedding_mse.value: lambda s, t, labels, config: F.mse_loss(s, t),
    DistillLoss.embedding_cosine.value: lambda s, t, labels, config: (1 - F.cosine_similarity(s, t, dim=-1)).mean(),
}


def _teacher(config: DistillConfig, ctx) -> torch.nn.Module:
    if config.teacher is None:
        return ctx.teacher
    from compress.models.loading import load_model

    return load_model(config.teacher)


def _device(config: DistillConfig) -> torch.device:
    if config.device == Device.cpu.value or (config.device == Device.auto.value and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError(
            "distill: device 'cuda' was asked for but no CUDA device is available; use device: auto or cpu"
        )
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


@register_pass("distill", DistillConfig)
def distill(model: torch.nn.Module, config: DistillConfig, ctx) -> torch.nn.Module:
    device = _device(config)
    teacher = _teacher(config, ctx).eval()
    still = select_modules(model, config.frozen, owner="distill.frozen") if config.frozen else {}
    rounded = select_modules(model, config.int4_aware, owner="distill.int4_aware") if config.int4_aware else {}
    with (
        zeros_kept(model, config.keep_sparsity) as masked,
        frozen(still) as unchanged,
        rounded_weights(rounded, config.int4_block_size, config.int4_grid, config.int4_inputs) as int4_aware,
    ):
        model.to(device)
        teacher.to(device)
        try:
            model = _train(model, teacher, device, config, ctx)
        finally:
            model.to("cpu")
            teacher.to("cpu")
    ctx.record(sparse_layers_kept=masked, frozen_values=unchanged, int4_aware=int4_aware, device=str(device))
    return model


def _save_checkpoint(path, model, feature_loss, optimizer, schedule, best_metric, best_state, counters) -> None:
    """Everything needed to continue after this epoch; rank 0 writes, atomically."""
    if path is not None and is_main():
        state = {
            "model": trainable_state(model),
            "projections": feature_loss.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
        }
        state.update(counters, best_metric=best_metric, best_state=best_state)
        write_atomic(path, lambda tmp: torch.save(state, tmp))
    barrier()


def _load_checkpoint(path, model, feature_loss, optimizer, schedule) -> dict | None:
    if path is None or not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    restore_trainable_state(model, state.pop("model"))
    feature_loss.load_state_dict(state.pop("projections"))
    optimizer.load_state_dict(state.pop("optimizer"))
    schedule.load_state_dict(state.pop("schedule"))
    return state


def _epoch_batches(ctx) -> list:
    """This rank's share of one epoch of train batches (all of them for one process)."""
    return shard(list(ctx.data.batches("train")))


def _train(model: torch.nn.Module, teacher, device: torch.device, config: DistillConfig, ctx) -> torch.nn.Module:
    first_epoch = _epoch_batches(ctx)
    batches_per_epoch = len(first_epoch)
    if batches_per_epoch == 0:
        raise InputError(
            f"distill: the train split has too few batches for {world_size()} process(es); "
            "give the task data a 'train' split with at least one batch per process"
        )
    total = int(min(config.epochs * batches_per_epoch, config.max_steps or float("inf")))
    params = [p for p in model.parameters() if p.requires_grad and p.is_floating_point()]
    if not params:
        raise InputError("distill: the model has no trainable parameters (all requires_grad=False)")
    probe = to_device(training_inputs(first_epoch[0]), device)
    weights = (config.hidden_weight, config.relation_weight)
    # kept_layers index the pipeline's input model: a teacher named by the recipe is another model
    history = ctx.history if config.teacher is None else []
    layers, why = choose(config.layerwise, model, teacher, history, weights, bool(config.features))
    # hand-named features first, so their projections keep the indices the record names them by
    feature_loss = FeatureLoss(config.features + (layers.hidden if layers else []), model, teacher, probe).to(device)
    relations = RelationLoss(layers.attention if layers else [], layers.relation_heads if layers else 0, weights[1])
    teacher_names = feature_loss.teacher_names + relations.teacher_names
    student_names = feature_loss.student_names + relations.student_names
    ctx.record(
        layer_map=layers.layer_map if layers else None,
        layerwise=layers.record(*weights) if layers else None,
        layerwise_why=why,
    )
    params += list(feature_loss.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, int(config.warmup_ratio * total)))
    # DDP averages gradients across ranks, so every rank ends with the same weights.
    ids = [device.index] if device.type == "cuda" else None
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids) if world_size() > 1 else model
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda" and config.mixed_precision)
    split = ctx.data.resolve("validation")
    checkpoint = ctx.scratch_dir / "distill.pt" if ctx.scratch_dir else None
    state = _load_checkpoint(checkpoint, model, feature_loss, optimizer, schedule)
    if state is None:
        state = {"epoch": 0, "step": 0, "stale": 0, "history": [], "best_epoch": 0}
        state.update(best_metric=ctx.evaluate(model, split), best_state=trainable_state(model))
    else:
        log.info(f"  distill: resumed after epoch {state['epoch']} from {checkpoint}")
    best_metric, best_state, best_epoch = state["best_metric"], state["best_state"], state["best_epoch"]
    history, step, stale, start = state["history"], state["step"], state["stale"], time.perf_counter()

    stopped_by = "completed"

    def out_of_budget() -> bool:
        nonlocal stopped_by
        over = config.max_seconds is not None and time.perf_counter() - start > config.max_seconds
        if step >= total:
            return True
        if mean_across_ranks(float(over)) > 0:  # any rank over: all stop together
            stopped_by = "max_seconds"
            return True
        return False

    with training_progress(total) as progress:
        for epoch in range(state["epoch"] + 1, config.epochs + 1):
            net.train()
            losses = []
            for batch in _epoch_batches(ctx):
                inputs, labels = to_device(training_inputs(batch), device), to_device(_labels(batch), device)
                with torch.no_grad(), autocast, taps(teacher, teacher_names, "teacher") as teacher_features:
                    target = first_tensor(call_model(teacher, inputs)).float()
                with autocast, taps(model, student_names, "student") as student_features:
                    student = first_tensor(call_model(net, inputs)).float()
                student, target, labels = next_token_targets(model, student, target, labels)
                loss = config.output_weight * LOSSES[config.loss](student, target, labels, config)
                if feature_loss.matches:
                    loss = loss + feature_loss(student_features, teacher_features)
                if relations.pairs:
                    loss = loss + relations(student_features, teacher_features, inputs)
                optimizer.zero_grad()
                loss.backward()
                average_gradients(feature_loss.parameters())
                if config.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                schedule.step()
                step += 1
                losses.append(loss.item())
                progress(step, f"epoch {epoch} loss {losses[-1]:.4f} {split} {best_metric:.4f} (best)")
                if out_of_budget():
                    break
            model.eval()
            loss = mean_across_ranks(sum(losses) / max(len(losses), 1))
            metric = ctx.evaluate(model, split)
            history.append({"epoch": epoch, "loss": round(loss, 6), split: metric})
            log.info(f"  distill epoch {epoch}: loss {loss:.4f}, {split} metric {metric:.4f}")
            if ctx.metric_loss(best_metric, metric) <= 0:  # ties: the later epoch, more steps at lower lr
                best_metric, best_state, best_epoch, stale = metric, trainable_state(model), epoch, 0
            else:
                stale += 1
            counters = {"epoch": epoch, "step": step, "stale": stale, "history": history, "best_epoch": best_epoch}
            _save_checkpoint(checkpoint, model, feature_loss, optimizer, schedule, best_metric, best_state, counters)
            if out_of_budget():
                break
            if config.patience and stale >= config.patience:
                stopped_by = "early_stopping"
                break
    restore_trainable_state(model, best_state)
    ctx.record(
        best_epoch=best_epoch,
        best_metric=best_metric,
        selected_on=split,
        steps=step,
        planned_steps=total,
        # why training ended before its planned steps: a time budget makes the result machine-dependent
        stopped_by=stopped_by if step < total else "completed",
        epochs=history,
        processes=world_size(),
        feature_projections={
            m.student: m.teacher or m.student
            for i, m in enumerate(config.features)
            if str(i) in feature_loss.projections
        },
    )
    return model
