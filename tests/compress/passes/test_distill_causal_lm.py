"""Distillation of a causal LM on text: per-token KL (and next-token cross-entropy) over the real tokens
only, the logits at t matched to the label at t + 1; a damaged tiny Llama is pulled back to its teacher."""

import copy

import numpy as np
import torch
import torch.nn.functional as F

from compress.engine.context import Context
from compress.models.data import TaskData
from compress.models.text import text_batches
from compress.passes.distill import DistillConfig, distill, logits_loss, next_token_targets
from tests.tiny_decoders import tiny_decoder, word_level_tokenizer

TEXT = ["the cat sat on the mat", "a dog ran far and fast", "the red bird sings loud", "a big blue house",
        "the small tree is quiet", "a slow cat and a fast dog", "the mat is red", "a bird and a tree"]  # fmt: skip


def test_per_token_loss_averages_over_the_labelled_tokens_only():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 4, 5, generator=g), torch.randn(2, 4, 5, generator=g)
    labels = torch.tensor([[1, 2, 3, 4], [0, 1, -100, -100]])
    config = DistillConfig(temperature=2.0, alpha=0.25)
    kl = F.kl_div(F.log_softmax(student / 2, -1), F.log_softmax(teacher / 2, -1), reduction="none", log_target=True)
    kl = kl.sum(-1)
    real = labels != -100
    expected_soft = kl[real].mean() * 4  # 6 real tokens; the two padded ones never count
    expected_hard = F.cross_entropy(student[real], labels[real])
    got = logits_loss(student, teacher, labels, config)
    torch.testing.assert_close(got, 0.25 * expected_soft + 0.75 * expected_hard)
    # a causal LM's logits at t predict the label at t + 1
    model = tiny_decoder("llama")
    s, t, y = next_token_targets(model, student, teacher, labels)
    assert s.shape == (2, 3, 5) and torch.equal(y, labels[:, 1:]) and torch.equal(t, teacher[:, :-1])


def agreement(model, teacher, batches) -> float:
    hits = total = 0
    with torch.no_grad():
        for inputs, _ in batches:
            real = inputs["attention_mask"].bool()
            same = model(**inputs).logits.argmax(-1) == teacher(**inputs).logits.argmax(-1)
            hits, total = hits + int(same[real].sum()), total + int(real.sum())
    return hits / total


def test_a_damaged_tiny_llama_is_distilled_back_towards_its_teacher():
    tokenizer = word_level_tokenizer()
    batches = text_batches(TEXT, tokenizer, max_length=16, batch_size=4)
    teacher = tiny_decoder("llama")
    student = copy.deepcopy(teacher)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every matrix perturbed by half its init scale: no greedy token left in place
        for weight in student.parameters():
            if weight.dim() == 2:
                weight.add_(torch.randn(weight.shape, generator=g) * 0.01)
    data = TaskData(eval=batches, train=batches, validation=batches)
    before = agreement(student, teacher, batches)
    ctx = Context(data, batches[0][0], teacher, lambda m, split="eval": agreement(m, teacher, batches))
    config = DistillConfig(epochs=60, max_steps=60, lr=5e-3, warmup_ratio=0.0, alpha=0.7, layerwise="off")
    student = distill(student, config, ctx)
    after = agreement(student, teacher, batches)
    assert before < 0.5 and after >= 0.95, (before, after)


def test_frozen_projections_stay_bit_identical_while_the_rest_trains():
    tokenizer = word_level_tokenizer()
    batches = text_batches(TEXT, tokenizer, max_length=16, batch_size=4)
    teacher = tiny_decoder("llama")
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.model.norm.weight.mul_(0.5)  # something for the trained parameters to mend
    before = {name: p.detach().clone() for name, p in student.named_parameters()}
    data = TaskData(eval=batches, train=batches, validation=batches)
    ctx = Context(data, batches[0][0], teacher, lambda m, split="eval": agreement(m, teacher, batches))
    config = DistillConfig(max_steps=5, lr=1e-2, layerwise="off", frozen=["re:.*_proj"])
    student = distill(student, config, ctx)
    projections = [name for name in before if "_proj." in name]
    assert len(projections) == 14  # 2 blocks x q, k, v, o, gate, up, down
    assert all(torch.equal(before[name], student.get_parameter(name)) for name in projections)
    assert not torch.equal(before["model.norm.weight"], student.model.norm.weight)
    assert ctx.facts["frozen_values"] == sum(before[name].numel() for name in projections)
    assert all(p.requires_grad for p in student.parameters())  # trainable again after the pass


def _int4_aware(**options):
    """A tiny Llama distilled for 5 steps with every projection trained through its int4 rounding."""
    tokenizer = word_level_tokenizer()
    batches = text_batches(TEXT, tokenizer, max_length=16, batch_size=4)
    teacher = tiny_decoder("llama")
    data = TaskData(eval=batches, train=batches, validation=batches)
    ctx = Context(data, batches[0][0], teacher, lambda m, split="eval": agreement(m, teacher, batches))
    config = DistillConfig(
        max_steps=5, lr=1e-2, layerwise="off", int4_aware=["re:.*_proj"], int4_block_size=16, **options
    )
    return distill(copy.deepcopy(teacher), config, ctx), teacher, ctx


def test_int4_aware_training_leaves_weights_that_block_minimum_packs_exactly():
    from export.quantize import block_minimum

    student, teacher, ctx = _int4_aware()
    assert len(ctx.facts["int4_aware"]) == 14 and not any(
        "parametrizations" in n for n, _ in student.named_parameters()
    )
    for name in ctx.facts["int4_aware"]:
        weight = student.get_submodule(name).weight.detach().numpy().T  # [in, out], as MatMul reads it
        assert not np.array_equal(weight, teacher.get_submodule(name).weight.detach().numpy().T)  # it trained
        np.testing.assert_allclose(block_minimum.dequantize(*block_minimum.pack(weight, 16)), weight, atol=1e-6)
    # the teacher's own weights are not on a 4-bit grid: packing them is lossy, which the test above is not
    raw = teacher.model.layers[0].mlp.up_proj.weight.detach().numpy().T
    assert np.abs(block_minimum.dequantize(*block_minimum.pack(raw, 16)) - raw).max() > 1e-4


def test_the_symmetric_grid_trains_to_weights_packed_without_offsets():
    from export.quantize import block_minimum

    student, teacher, ctx = _int4_aware(int4_grid="symmetric")
    assert len(ctx.facts["int4_aware"]) == 14
    for name in ctx.facts["int4_aware"]:
        weight = student.get_submodule(name).weight.detach().numpy().T
        codes, scales = block_minimum.symmetric_codes(weight, 16)
        low, high = codes & 0x0F, codes >> 4
        assert min(low.min(), high.min()) >= 1 and max(low.max(), high.max()) <= 15  # k + 8, k in -7..7
        steps = np.stack([low, high], -1).reshape(weight.shape[1], -1, 16).astype(np.float32) - 8
        rebuilt = (steps * scales.reshape(weight.shape[1], -1, 1)).reshape(weight.shape[1], -1).T
        np.testing.assert_allclose(rebuilt, weight, rtol=0, atol=1e-6)
    raw = teacher.model.layers[0].mlp.up_proj.weight.detach().numpy().T
    assert block_minimum.symmetric_codes(raw, 16) is None  # off the grid: block_minimum's offsets then
