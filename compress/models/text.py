"""Text for causal language models: sentences from files or a list, tokenized with the model's own
tokenizer into ``(inputs, labels)`` batches that ``perplexity`` scores and distillation trains on.

A batch's inputs are ``{"input_ids", "attention_mask"}`` (int64, right-padded), its labels the
input ids with -100 where a token is padding (Hugging Face's convention, so a model's own loss
agrees). Two layouts:

- per sentence (default): each text is one row, cut at ``max_length`` tokens; a sentence's first
  token is never scored (nothing precedes it), so short sentences weigh what they hold.
- packed (``pack=True``): every text joined with the end-of-sequence token and cut into rows of
  ``max_length``, the layout of pre-training and of lm-eval's rolling windows (no padding but in
  the last row).

transformers is imported only when a tokenizer is loaded from a folder.
"""

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from compress.core import log
from compress.core.errors import InputError
from compress.models.data import TaskData

IGNORED = -100  # the label of a padding token: not scored, not trained on


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _jsonl(path: Path, field: str = "text") -> list[str]:
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{path}:{number}: not JSON ({exc.msg}); each line must be an object with a {field!r}"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise InputError(f"{path}:{number}: no string field {field!r}; each line must be {{{field!r}: ...}}")
        texts.append(record[field])
    return texts


def _stsb(path: Path) -> list[str]:
    """Both sentences of every STS-B pair (tab-separated, columns 6 and 7), each distinct sentence once."""
    seen: dict[str, None] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            for sentence in row[5:7]:
                if sentence.strip():
                    seen.setdefault(sentence.strip(), None)
    return list(seen)


# File suffix -> reader. STS-B ships as .csv files that are really tab-separated pairs.
READERS = {".txt": _lines, ".jsonl": _jsonl, ".csv": _stsb, ".tsv": _stsb}


def read_texts(source: "str | Path | Sequence[str]", limit: int | None = None) -> list[str]:
    """Texts from a list of strings or a file (``.txt`` one per line, ``.jsonl`` with a ``text`` field,
    STS-B's ``.csv``/``.tsv`` pairs), at most ``limit`` of them, in file order."""
    if isinstance(source, (list, tuple)):
        if not all(isinstance(text, str) for text in source):
            raise InputError("text data: a list of texts must hold strings only")
        texts = list(source)
    else:
        path = Path(source)
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            raise InputError(f"text data: {path}: unknown kind of file; use one of {sorted(READERS)}")
        if not path.is_file():
            raise InputError(f"text data: {path} is not a file; give a text file or a list of strings")
        texts = reader(path)
    texts = texts[:limit] if limit is not None else texts
    if not texts:
        raise InputError(f"text data: {source if not isinstance(source, (list, tuple)) else 'the list'} holds no text")
    return texts


def load_tokenizer(tokenizer: Any, gguf_file: str | None = None) -> Any:
    """A tokenizer object as is, or the one saved in a Hugging Face folder (or its GGUF file); None:
    SmolLM2-135M-Instruct's, as ``compress.models.hf.causal_lm`` loads that model by default."""
    if tokenizer is None:
        from compress.models.hf import SMOLLM2_GGUF, smollm2_path

        tokenizer, gguf_file = smollm2_path(), gguf_file or SMOLLM2_GGUF
    if not isinstance(tokenizer, (str, Path)):
        return tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer), gguf_file=gguf_file)
    except (OSError, ValueError) as exc:
        raise InputError(f"text data: no tokenizer in {tokenizer} ({str(exc).splitlines()[0]})") from None


def _rows(texts: list[str], tokenizer: Any, max_length: int, pack: bool) -> list[list[int]]:
    encoded = [tokenizer(text, add_special_tokens=not pack)["input_ids"] for text in texts]
    if not pack:
        return [ids[:max_length] for ids in encoded if len(ids) >= 2]
    separator = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    stream = [token for ids in encoded for token in (*ids, *separator)]
    return [stream[start : start + max_length] for start in range(0, len(stream) - 1, max_length)]


def _batch(rows: list[list[int]], pad_id: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[index, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}, ids.masked_fill(mask == 0, IGNORED)


def text_batches(
    texts: list[str], tokenizer: Any, max_length: int = 128, batch_size: int = 8, pack: bool = False
) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """``texts`` tokenized into ``(inputs, labels)`` batches of ``batch_size`` rows (see the module)."""
    if max_length < 2 or batch_size < 1:
        raise InputError(f"text data: max_length {max_length} and batch_size {batch_size}; need 2+ and 1+")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise InputError("text data: the tokenizer has neither a pad nor an end-of-sequence token to pad with")
    rows = _rows(texts, tokenizer, max_length, pack)
    if not rows:
        raise InputError("text data: no text holds 2 tokens or more; a causal LM needs a token to predict")
    return [_batch(rows[start : start + batch_size], pad_id) for start in range(0, len(rows), batch_size)]


def text_data(
    eval: "str | Path | Sequence[str]",
    tokenizer: Any = None,
    train: "str | Path | Sequence[str] | None" = None,
    validation: "str | Path | Sequence[str] | None" = None,
    max_length: int = 128,
    batch_size: int = 8,
    pack: bool = False,
    limit: int | None = None,
    gguf_file: str | None = None,
    train_limit: int | None = None,
    train_skip: int = 0,
) -> TaskData:
    """A data factory for causal LMs (``data.factory: compress.models.text:text_data``): each split's
    texts (a file or a list) tokenized with ``tokenizer`` (an object, or the folder of the model),
    at most ``limit`` texts a split; the train split (what distillation reads) ``train_limit`` texts
    (default ``limit``) after the first ``train_skip`` of its source, so that a validation split
    read from the same file's start is not trained on. A train text equal to an eval text is left
    out (STS-B's train and dev share 93 sentences word for word), so no figure is scored on text
    the model was trained on."""
    if train_skip < 0:
        raise InputError(f"text data: train_skip {train_skip}; give 0 or more texts to skip")
    tokenizer = load_tokenizer(tokenizer, gguf_file)
    eval_texts = read_texts(eval, limit)

    def split(texts):
        return None if texts is None else text_batches(texts, tokenizer, max_length, batch_size, pack)

    train_texts = None
    if train is not None:
        held = set(eval_texts)
        after = read_texts(train)[train_skip:]
        kept = [text for text in after if text not in held]
        count = limit if train_limit is None else train_limit
        train_texts = kept[:count] if count is not None else kept
        if not train_texts:
            raise InputError(f"text data: {train} holds no text after the first {train_skip} (train_skip) "
                             "that is not also an eval text")  # fmt: skip
        if len(kept) < len(after):
            log.info(f"text data: {len(after) - len(kept)} of the train texts are eval texts too: left out")
    validation_texts = None if validation is None else read_texts(validation, limit)
    splits = {"eval": eval_texts, "train": train_texts, "validation": validation_texts}
    return TaskData(**{name: split(texts) for name, texts in splits.items()}, tokenizer=tokenizer)
