"""Text for causal LMs: files and lists read, tokenized per sentence or packed, padding never scored."""

import json

import pytest
import torch

from compress.core.errors import InputError
from compress.models.text import IGNORED, read_texts, text_batches, text_data
from tests.tiny_decoders import word_level_tokenizer

STSB_ROWS = [
    ["main-captions", "MSRvid", "2012test", "0001", "5.000", "w3 w4 w5", "w6 w7"],
    ["main-captions", "MSRvid", "2012test", "0004", "3.800", "w6 w7", "w8 w9 w10 w11", "extra"],
]


def test_each_kind_of_file_and_a_list_give_the_texts_in_order(tmp_path):
    (tmp_path / "a.txt").write_text("w3 w4\n\n  w5 w6  \n")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "w3 w4"}) + "\n\n" + json.dumps({"text": "w5"}) + "\n")
    (tmp_path / "sts.csv").write_text("\n".join("\t".join(row) for row in STSB_ROWS) + "\n")
    assert read_texts(tmp_path / "a.txt") == ["w3 w4", "w5 w6"]
    assert read_texts(tmp_path / "a.jsonl") == ["w3 w4", "w5"]
    # both sentences of each pair, a sentence seen twice kept once
    assert read_texts(tmp_path / "sts.csv") == ["w3 w4 w5", "w6 w7", "w8 w9 w10 w11"]
    assert read_texts(["w3", "w4 w5", "w6"], limit=2) == ["w3", "w4 w5"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.parquet", "x", "unknown kind of file"),
        ("a.jsonl", '{"text": 3}\n', "a.jsonl:1: no string field 'text'"),
        ("a.jsonl", "{oops\n", "a.jsonl:1: not JSON"),
        ("a.txt", "\n \n", "holds no text"),
    ],
)
def test_bad_text_files_are_one_line_naming_the_file(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=message):
        read_texts(tmp_path / name)


def test_per_sentence_batches_pad_right_and_never_score_padding():
    tokenizer = word_level_tokenizer()
    batches = text_batches(["w3 w4 w5", "w6 w7", "w8 w9"], tokenizer, max_length=8, batch_size=2)
    (inputs, labels), (last_inputs, _) = batches
    assert inputs["input_ids"].tolist() == [[3, 4, 5], [6, 7, 0]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert labels.tolist() == [[3, 4, 5], [6, 7, IGNORED]]
    assert last_inputs["input_ids"].dtype == torch.long and last_inputs["input_ids"].tolist() == [[8, 9]]


def test_a_one_token_text_is_left_out_and_long_texts_are_cut():
    tokenizer = word_level_tokenizer()
    batches = text_batches(["w3 w4 w5 w6 w7", "w8"], tokenizer, max_length=3, batch_size=4)
    assert len(batches) == 1
    assert batches[0][0]["input_ids"].tolist() == [[3, 4, 5]]


def test_packing_joins_texts_with_eos_and_cuts_rows_of_max_length():
    tokenizer = word_level_tokenizer()
    batches = text_batches(["w3 w4", "w5", "w6 w7 w8 w9"], tokenizer, max_length=4, batch_size=8, pack=True)
    inputs, labels = batches[0]
    # stream: 3 4 </s> 5 </s> 6 7 8 9 </s> -> rows of 4, the last one padded
    assert inputs["input_ids"].tolist() == [[3, 4, 2, 5], [2, 6, 7, 8], [9, 2, 0, 0]]
    assert labels[2].tolist() == [9, 2, IGNORED, IGNORED]
    # a lone last token has nothing to be predicted from: no row for it
    assert len(text_batches(["w3 w4 w5"], tokenizer, max_length=3, pack=True)[0][0]["input_ids"]) == 1


def test_text_data_builds_each_split_from_its_source(tmp_path):
    (tmp_path / "train.txt").write_text("w3 w4 w5\nw6 w7\n")
    data = text_data(["w3 w4", "w5 w6"], word_level_tokenizer(), train=tmp_path / "train.txt", batch_size=1)
    assert len(data.eval) == 2 and len(data.train) == 2 and data.validation is None
    with pytest.raises(InputError, match="need 2\\+ and 1\\+"):
        text_batches(["w3 w4"], word_level_tokenizer(), max_length=1)


def test_the_train_split_skips_what_validation_reads_from_the_same_file(tmp_path):
    texts = tmp_path / "train.txt"
    texts.write_text("".join(f"w{i} w{i + 1}\n" for i in range(3, 13)))  # 10 texts
    tokenizer = word_level_tokenizer()
    data = text_data(["w3 w4"], tokenizer, train=texts, validation=texts, batch_size=1, limit=3, train_skip=3)
    first = lambda split: [tokenizer.decode(inputs["input_ids"][0]) for inputs, _ in split]  # noqa: E731
    assert first(data.validation) == ["w3 w4", "w4 w5", "w5 w6"]
    assert first(data.train) == ["w6 w7", "w7 w8", "w8 w9"]  # the next 3, none of validation's
    data = text_data(["w3 w4"], tokenizer, train=texts, batch_size=1, limit=3, train_skip=3, train_limit=None)
    assert len(data.train) == 3  # train_limit None: limit
    data = text_data(["w3 w4"], tokenizer, train=texts, batch_size=1, limit=3, train_skip=8, train_limit=100)
    assert first(data.train) == ["w11 w12", "w12 w13"]
    with pytest.raises(InputError, match="no text after the first 10"):
        text_data(["w3 w4"], tokenizer, train=texts, train_skip=10)


def test_no_eval_text_is_trained_on(tmp_path):
    texts = tmp_path / "train.txt"
    texts.write_text("w3 w4\nw5 w6\nw7 w8\nw9 w10\n")
    tokenizer = word_level_tokenizer()
    data = text_data(["w5 w6", "w9 w10"], tokenizer, train=texts, batch_size=1, train_limit=2)
    trained = [tokenizer.decode(inputs["input_ids"][0]) for inputs, _ in data.train]
    assert trained == ["w3 w4", "w7 w8"]  # the eval texts left out, and the limit counts what is kept
