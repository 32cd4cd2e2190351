"""Teacher-forced agreement of every decoder artifact with the run's fp32 reference, in ONNX Runtime.

A run whose torch passes change the weights (distillation, pruning) has two fp32 models: the baseline
the user brought and the compressed one. An artifact's parity is checked against its own torch source;
what a user asks of a compressed decoder is how often it still predicts the baseline's next token. So
each passed decoder artifact with a KV cache is scored against the baseline artifact (the compressed
one where the recipe exports no baseline) on the first ``export.parity.samples`` rows of the eval
split: token-weighted perplexity and teacher-forced top-1 agreement (``export.decoder.perplexity``),
all files read by ONNX Runtime (the fp32 artifacts' parity with torch is checked at export), so
``modelpress report`` re-measures it from the run folder.
"""

from pathlib import Path

from compress.core import log
from compress.models.data import TaskData
from compress.models.evaluate import Evaluator
from compress.recipe.schema import Recipe
from export.onnx.runtime import make_session


def _reference(decoders: list[dict]) -> dict | None:
    floats = [r for r in decoders if r.get("precision") == "fp32"]
    return next((r for r in floats if r["name"] == "baseline"), next(iter(floats), None))


def token_batches(evaluator: Evaluator, data: TaskData, split: str, rows: int) -> list[tuple]:
    """(input_ids, attention_mask) of the first batches of ``split`` until ``rows`` rows; none where the
    inputs are not a causal LM's token batches (nothing to score token by token)."""
    batches = []
    for batch in data.batches(split):
        for inputs in evaluator.inputs_of(batch):
            if not isinstance(inputs, dict) or not {"input_ids", "attention_mask"} <= inputs.keys():
                return []
            batches.append((inputs["input_ids"], inputs["attention_mask"]))
            rows -= len(inputs["input_ids"])
        if rows <= 0:
            break
    return batches


def score_language(out_dir: Path, recipe: Recipe, evaluator: Evaluator, data: TaskData, records: list[dict]) -> None:
    """Add ``language`` (reference, tokens, perplexity, top1_agreement) to each passed decoder record."""
    from export.decoder.perplexity import language_scores, onnx_logits

    decoders = [r for r in records if r.get("status") == "passed" and r.get("kv_cache")]
    reference = _reference(decoders)
    if reference is None or len(decoders) < 2:
        return
    batches = token_batches(evaluator, data, "eval", recipe.export.parity.samples)
    if not batches:
        return
    sessions = {r["name"]: make_session(out_dir / r["path"], recipe.report.threads) for r in decoders}
    try:
        scores = language_scores({n: onnx_logits(s) for n, s in sessions.items()}, batches, reference["name"])
    except ValueError as exc:  # no row with two real tokens among those scored
        log.warn(f"agreement with {reference['name']}: not scored ({exc})", collect=False)
        return
    rows = sum(len(ids) for ids, _ in batches)
    for record in decoders:
        got = scores[record["name"]]
        record["language"] = {"reference": reference["name"], "split": "eval", "rows": rows, **got.to_dict()}
        log.info(f"  {record['name']}: teacher-forced top-1 {got.top1_agreement:.4f} against {reference['name']}")
