"""Hugging Face workloads: STS-B parsing and splits, mean pooling of the sentence encoder."""

import pytest
import torch

from compress.models.evaluate import EVALUATORS
from compress.models.hf import read_stsb, stsb_data
from tests.tiny_models import tiny_bert

ROWS = [
    "main-captions\tMSRvid\t2012test\t0001\t5.000\tA plane is taking off.\tAn air plane is taking off.",
    "main-captions\tMSRvid\t2012test\t0004\t3.800\tA man is playing a flute.\tA man plays a flute.\tsource\textra",
    "main-news\theadlines\t2013\t0001\t0.500\tThree dogs run.\tA cat is asleep.",
]


def write_stsb(folder):
    for name in ("sts-train.csv", "sts-dev.csv"):
        (folder / name).write_text("\n".join(ROWS) + "\n")


def test_read_stsb_takes_score_and_sentences_and_ignores_trailing_fields(tmp_path):
    write_stsb(tmp_path)
    rows = read_stsb(tmp_path / "sts-dev.csv")
    assert rows[1] == ("A man is playing a flute.", "A man plays a flute.", 3.8)
    assert [r[2] for r in rows] == [5.0, 3.8, 0.5]


def test_stsb_splits_keep_validation_pairs_out_of_training(tmp_path):
    write_stsb(tmp_path)
    data = stsb_data(str(tmp_path), batch_size=2, validation_pairs=1)
    (a, b, scores), _ = data.eval
    assert a["input_ids"].shape[0] == 2 and scores.tolist() == pytest.approx([5.0, 3.8])
    assert len(data.validation) == 1
    train_ids = {tuple(row.tolist()) for batch in data.train for row in batch["input_ids"]}
    held_out = data.validation[0][0]["input_ids"][0]
    assert not any(tuple(held_out.tolist())[:5] == ids[:5] for ids in train_ids)
    assert sum(len(batch["input_ids"]) for batch in data.train) == 4  # 2 remaining pairs, 4 sentences


def test_sentence_encoder_mean_pools_over_the_mask():
    model = tiny_bert()
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    with torch.no_grad():
        tokens = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = torch.stack([tokens[0, :3].mean(0), tokens[1, :2].mean(0)])
        torch.testing.assert_close(model(ids, mask), expected)


def test_identical_embeddings_rank_like_gold_scores():
    b = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, -1.0]])  # cosines 1, 0.71, -1
    batches = [(torch.eye(3), b, torch.tensor([5.0, 4.0, 0.0]))]
    assert EVALUATORS["embedding_similarity"].score(lambda x: x, batches) == 100.0
