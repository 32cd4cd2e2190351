"""Language-model quality of a decoder artifact against its fp32 reference, in figures torch and ONNX share.

This module owns three measures, computed the same way for an ONNX decoder session and a torch
causal LM so that their figures compare:

* ``language_scores``: token-weighted perplexity (the mean negative log-likelihood over every
  predicted token of every batch, then exp; not a mean of per-row perplexities) and teacher-forced
  top-1 agreement with a reference, on batches of token ids with attention masks. One prefill per
  batch with an empty past gives the logits of all positions; position t predicts token t + 1, and
  only pairs where both t and t + 1 are real tokens count (padding, left or right, is ignored).
* ``greedy_tokens`` / ``greedy_agreement``: free-running greedy continuations of N tokens, each
  runtime feeding back its own choices (unlike ``parity.generation_parity``, which teacher-forces
  torch's), and the share of tokens generated before the first divergence from the reference.

The stepping (feeds, positions, cache hand-over) is ``parity``'s, reused.
"""

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from export.decoder.families import uses_position_ids
from export.decoder.parity import _last_real, _onnx_step, _torch_step, empty_past, positions

# (input_ids, attention_mask) -> float logits [batch, sequence, vocab]
LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class LanguageScores:
    """Over ``tokens`` predicted tokens: mean NLL (nats), its perplexity, and the share of them whose
    top-1 equals the reference's (1.0 for the reference itself)."""

    tokens: int
    nll: float
    perplexity: float
    top1_agreement: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _feed(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    mask = attention_mask.long()
    return {"input_ids": input_ids.long(), "attention_mask": mask, "position_ids": positions(mask, input_ids.shape[1])}


def onnx_logits(session: Any, head_dim: int | None = None) -> LogitsFn:
    """Prefill logits of an ONNX decoder-with-past session (empty past; ``head_dim``: see ``parity.empty_past``)."""

    def logits(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        past = empty_past(session, input_ids.shape[0], head_dim)
        out, _ = _onnx_step(session, _feed(input_ids, attention_mask), past)
        return out

    return logits


def torch_logits(model: torch.nn.Module) -> LogitsFn:
    """Logits of a torch causal LM with the same positions as the ONNX prefill."""
    with_positions = uses_position_ids(model)

    def logits(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out, _ = _torch_step(model.eval(), _feed(input_ids, attention_mask), None, with_positions)
        return out

    return logits


def predicted(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, sequence - 1] bool: position t predicts a real token t + 1 from a real token t."""
    mask = attention_mask.bool()
    return mask[:, :-1] & mask[:, 1:]


def _nll_sum(logits: torch.Tensor, input_ids: torch.Tensor, valid: torch.Tensor) -> float:
    log_probs = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    picked = log_probs.gather(-1, input_ids[:, 1:, None].long()).squeeze(-1)
    return float(-picked[valid].sum())


def language_scores(
    candidates: dict[str, LogitsFn], batches: Iterable[Batch], reference: str
) -> dict[str, LanguageScores]:
    """Perplexity and teacher-forced top-1 agreement with ``candidates[reference]`` of every candidate,
    over the same ``batches`` (the reference runs once per batch)."""
    nll = dict.fromkeys(candidates, 0.0)
    agree = dict.fromkeys(candidates, 0)
    count = 0
    for input_ids, attention_mask in batches:
        valid = predicted(attention_mask)
        count += int(valid.sum())
        reference_top1 = None
        for name in [reference, *(n for n in candidates if n != reference)]:
            logits = candidates[name](input_ids, attention_mask).float()
            nll[name] += _nll_sum(logits, input_ids, valid)
            top1 = logits[:, :-1].argmax(-1)[valid]
            reference_top1 = top1 if reference_top1 is None else reference_top1
            agree[name] += int((top1 == reference_top1).sum())
    if count == 0:
        raise ValueError("no predicted tokens: every row has fewer than two real tokens")
    return {
        name: LanguageScores(count, nll[name] / count, math.exp(nll[name] / count), agree[name] / count)
        for name in candidates
    }


def _greedy(step: Callable, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """[batch, new_tokens] greedy tokens; ``step(feed, state) -> (logits, state)`` runs one forward."""
    mask = attention_mask.long()
    feed, new_mask, state, chosen = _feed(input_ids, mask), mask, None, []
    for _ in range(new_tokens):
        logits, state = step(feed, state)
        token = _last_real(logits, new_mask).argmax(-1)
        chosen.append(token)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        new_mask = mask[:, -1:]
        feed = {"input_ids": token[:, None], "attention_mask": mask, "position_ids": positions(mask, 1)}
    return torch.stack(chosen, dim=1)


def greedy_tokens(
    runtime: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int, head_dim: int | None = None
) -> torch.Tensor:
    """Free-running greedy continuation by ``runtime``: an ONNX decoder session or a torch causal LM."""
    if isinstance(runtime, torch.nn.Module):
        with_positions = uses_position_ids(runtime)
        model = runtime.eval()
        return _greedy(
            lambda feed, cache: _torch_step(model, feed, cache, with_positions), input_ids, attention_mask, new_tokens
        )
    first = empty_past(runtime, input_ids.shape[0], head_dim)
    return _greedy(
        lambda feed, past: _onnx_step(runtime, feed, first if past is None else past),
        input_ids,
        attention_mask,
        new_tokens,
    )


def prefix_lengths(candidate: torch.Tensor, reference: torch.Tensor) -> list[int]:
    """Per row, how many tokens ``candidate`` generated before its first divergence from ``reference``."""
    same = (candidate == reference).long()
    return [int(n) for n in same.cumprod(dim=1).sum(dim=1)]


def greedy_agreement(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of all generated tokens produced before each row's first divergence from the reference."""
    return sum(prefix_lengths(candidate, reference)) / candidate.numel()
