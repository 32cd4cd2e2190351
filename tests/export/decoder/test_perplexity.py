"""Perplexity, teacher-forced top-1 and greedy agreement: token-weighted, padding ignored, the same
figures from torch and from the exported ONNX decoder; greedy agreement counts up to the first divergence."""

import math

import pytest
import torch

from export.decoder import export_decoder
from export.decoder.parity import onnx_session
from export.decoder.perplexity import (
    greedy_agreement,
    greedy_tokens,
    language_scores,
    onnx_logits,
    predicted,
    prefix_lengths,
    torch_logits,
)
from tests.tiny_decoders import tiny_decoder


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    model = tiny_decoder("llama")
    decoder = export_decoder(model, tmp_path_factory.mktemp("llama") / "model.onnx")
    return model, onnx_session(decoder.path)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 128, (3, 10), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[2, -4:] = 0  # right padding
    return ids, mask


def test_perplexity_is_token_weighted_and_ignores_padding(llama):
    model, session = llama
    ids, mask = _batch()
    scores = language_scores({"torch": torch_logits(model), "onnx": onnx_logits(session)}, [(ids, mask)], "torch")
    assert scores["torch"].tokens == 9 + 6 + 5 == int(predicted(mask).sum())

    # Each row alone, unpadded, through transformers' own loss: the token-weighted mean of the three.
    total = 0.0
    with torch.no_grad():
        for row in range(3):
            real = ids[row][mask[row].bool()][None]
            total += float(model(input_ids=real, labels=real).loss) * (real.shape[1] - 1)
    assert scores["torch"].nll == pytest.approx(total / 20, rel=1e-5)
    assert scores["torch"].perplexity == pytest.approx(math.exp(total / 20), rel=1e-5)
    assert scores["onnx"].perplexity == pytest.approx(scores["torch"].perplexity, rel=1e-5)
    assert scores["onnx"].top1_agreement == 1.0


def test_greedy_continuations_agree_across_runtimes(llama):
    model, session = llama
    ids, mask = _batch()
    ids, mask = ids[:2], mask[:2]  # left padding only: generation continues from the last column
    expected = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=6)[:, -6:]
    assert torch.equal(greedy_tokens(model, ids, mask, 6), expected)
    assert torch.equal(greedy_tokens(session, ids, mask, 6), expected)


def test_greedy_agreement_stops_at_the_first_divergence():
    reference = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    candidate = torch.tensor([[5, 6, 0, 8], [1, 2, 3, 4]])
    assert prefix_lengths(candidate, reference) == [2, 4]
    assert greedy_agreement(candidate, reference) == 6 / 8
