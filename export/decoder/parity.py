"""Generation parity of an exported decoder-with-past: ONNX Runtime against the torch model.

``generation_parity`` runs the prefill on a (padded) batch of prompts and then N greedy decode
steps, ONNX Runtime feeding its own ``present`` back as ``past`` and torch its own cache. Both
sides are fed torch's greedy token at every step (teacher forcing on torch's choice), so the logits
stay comparable after a disagreement; ONNX Runtime's own argmax is recorded beside torch's, and
``tokens_agree`` says whether free-running greedy generation would have produced the same tokens.

Positions follow ``generate()``: ``attention_mask.cumsum(-1) - 1`` (padded slots clamped to 1),
so left padding works as in transformers; right-padded prompts continue from each row's last
real token. Logits are compared only where the attention mask is 1 (padded query rows are
undefined in both runtimes).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.decoder.kv_export import cache_argument

# fp32 tolerance on logits, scaled by their magnitude (max |logit|, at least 1).
FP32_ATOL = 1e-4

NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


@dataclass(frozen=True)
class ParityRecord:
    """Per step (0 = prefill, then each decode step): the largest logits gap and its tolerance;
    per row, the greedy tokens each runtime chose."""

    max_abs_diff: tuple[float, ...]
    tolerance: tuple[float, ...]
    torch_tokens: tuple[tuple[int, ...], ...]
    onnx_tokens: tuple[tuple[int, ...], ...]

    @property
    def within_tolerance(self) -> bool:
        return all(diff <= tol for diff, tol in zip(self.max_abs_diff, self.tolerance))

    @property
    def tokens_agree(self) -> bool:
        return self.torch_tokens == self.onnx_tokens

    @property
    def ok(self) -> bool:
        return self.within_tolerance and self.tokens_agree

    def to_dict(self) -> dict:
        """The record an artifact keeps: per step the gap and its tolerance, and whether greedy tokens agree."""
        return {
            "steps": len(self.max_abs_diff) - 1,
            "max_abs_diff": [round(d, 9) for d in self.max_abs_diff],
            "tolerance": [round(t, 9) for t in self.tolerance],
            "within_tolerance": self.within_tolerance,
            "tokens_agree": self.tokens_agree,
            "prompts": len(self.torch_tokens),
        }


def decoding_parity(model: torch.nn.Module, session: Any, inputs: dict, steps: int = 4, rows: int = 4) -> dict:
    """The generation check of an exported decoder on the first ``rows`` prompts of a text batch
    (``input_ids`` and ``attention_mask``): prefill, then ``steps`` greedy steps, as a record."""
    ids, mask = inputs["input_ids"][:rows], inputs.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask[:rows]
    lengths = mask.long().sum(-1)
    if bool((mask.long().cumsum(-1).max(-1).values == lengths).all()) and bool((mask[:, 0] == 1).all()):
        # right padded: cut to the shortest row. A decoding step after right padding has no common
        # layout (torch appends the new key after the pads, GroupQueryAttention writes it after the
        # row's last real token), so the steps are compared on rows without padding.
        shortest = int(lengths.min())
        ids, mask = ids[:, :shortest], mask[:, :shortest]
    return generation_parity(model, session, ids, mask, steps).to_dict()


def onnx_session(path: Path | str, threads: int = 1) -> Any:
    """A CPU InferenceSession; one intra-op thread by default (parity, not speed, is measured)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def empty_past(session: Any, batch: int, head_dim: int | None = None) -> dict[str, np.ndarray]:
    """Zero-length past for the prefill, shaped from the session's own inputs ([batch, kv_heads, 0,
    head_dim]); ``head_dim`` for graphs whose head size is a named axis (onnxruntime-genai's builder
    writes ``kv_cache_dim``)."""
    past = {}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values."):
            size = spec.shape[3] if head_dim is None else head_dim
            past[spec.name] = np.zeros((batch, spec.shape[1], 0, size), dtype=NUMPY_DTYPES.get(spec.type, np.float32))
    return past


def positions(mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """``generate()``'s position ids for the last ``new_tokens`` slots of ``mask``."""
    ids = mask.long().cumsum(-1) - 1
    return ids.masked_fill(mask == 0, 1)[:, -new_tokens:]


def _onnx_step(session: Any, feed: dict[str, torch.Tensor], past: dict[str, np.ndarray]):
    names = {spec.name for spec in session.get_inputs()}
    inputs = {name: value.numpy() for name, value in feed.items() if name in names}
    outputs = session.run(None, {**inputs, **past})
    output_names = [spec.name for spec in session.get_outputs()]
    present = {
        name.replace("present.", "past_key_values.", 1): value
        for name, value in zip(output_names, outputs)
        if name.startswith("present.")
    }
    return torch.from_numpy(outputs[output_names.index("logits")]).float(), present


def _torch_step(model: torch.nn.Module, feed: dict[str, torch.Tensor], cache: Any, with_positions: bool):
    kwargs = {"input_ids": feed["input_ids"], "attention_mask": feed["attention_mask"]}
    if with_positions:
        kwargs["position_ids"] = feed["position_ids"]
    with torch.no_grad():
        out = model(**kwargs, **{cache_argument(model): cache}, use_cache=True, return_dict=True)
    return out.logits.float(), (out.cache if hasattr(out, "cache") else out.past_key_values)


def _last_real(logits: torch.Tensor, new_mask: torch.Tensor) -> torch.Tensor:
    """Each row's logits at its last unpadded new position (the last one, with left padding)."""
    last = new_mask.shape[1] - 1 - new_mask.flip(-1).long().argmax(-1)
    return logits[torch.arange(logits.shape[0]), last]


def _gap(onnx_logits: torch.Tensor, torch_logits: torch.Tensor, new_mask: torch.Tensor, atol: float):
    valid = new_mask.bool()
    reference = torch_logits[valid]
    diff = float((onnx_logits[valid] - reference).abs().max())
    return diff, atol * max(1.0, float(reference.abs().max()))


def generation_parity(
    model: torch.nn.Module,
    session: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    steps: int = 4,
    atol: float = FP32_ATOL,
) -> ParityRecord:
    """Prefill ``input_ids`` (padded per ``attention_mask``) then ``steps`` greedy steps in both runtimes."""
    model = model.eval()
    with_positions = "position_ids" in {spec.name for spec in session.get_inputs()}
    mask = attention_mask.long()
    feed = {"input_ids": input_ids.long(), "attention_mask": mask, "position_ids": positions(mask, input_ids.shape[1])}
    past, cache = empty_past(session, input_ids.shape[0]), None
    new_mask = mask[:, -input_ids.shape[1] :]
    diffs, tolerances, torch_tokens, onnx_tokens = [], [], [], []
    for _ in range(steps + 1):
        onnx_logits, past = _onnx_step(session, feed, past)
        torch_logits, cache = _torch_step(model, feed, cache, with_positions)
        diff, tolerance = _gap(onnx_logits, torch_logits, new_mask, atol)
        diffs.append(diff)
        tolerances.append(tolerance)
        chosen = _last_real(torch_logits, new_mask).argmax(-1)
        torch_tokens.append(chosen)
        onnx_tokens.append(_last_real(onnx_logits, new_mask).argmax(-1))
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        new_mask = mask[:, -1:]
        feed = {"input_ids": chosen[:, None], "attention_mask": mask, "position_ids": positions(mask, 1)}
    return ParityRecord(
        max_abs_diff=tuple(diffs),
        tolerance=tuple(tolerances),
        torch_tokens=tuple(tuple(int(t) for t in row) for row in torch.stack(torch_tokens, dim=1)),
        onnx_tokens=tuple(tuple(int(t) for t in row) for row in torch.stack(onnx_tokens, dim=1)),
    )


def teacher_forced_top1(
    session: Any, input_ids: torch.Tensor, reference_logits: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> float:
    """Share of (unpadded) positions where one ONNX prefill over ``input_ids`` picks the same top-1
    token as ``reference_logits`` [batch, sequence, vocab] (e.g. torch's, or the uncompressed model's)."""
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
    feed = {"input_ids": input_ids.long(), "attention_mask": mask, "position_ids": positions(mask, input_ids.shape[1])}
    logits, _ = _onnx_step(session, feed, empty_past(session, input_ids.shape[0]))
    valid = mask.bool()
    return float((logits.argmax(-1)[valid] == reference_logits.argmax(-1)[valid]).float().mean())
