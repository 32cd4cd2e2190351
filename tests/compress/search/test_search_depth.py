"""A search over depth and heads on a tiny BERT encoder: blocks dropped first, cut stages reused.

Two candidates (half the blocks; half the blocks and half the heads) on two rungs, no
quantization, objective size so that no timing decides. Each candidate's cut model is computed once
and loaded by its longer rung; the written recipe drops the blocks again and reproduces the metric.
"""

import torch

import compress
from compress.models.data import TaskData
from compress.search import trials as trials_module  # compress.search itself is the function
from tests.compress.search.helpers import counting, rerun_artifact
from tests.tiny_models import tiny_bert, token_data

RECIPE = {
    "name": "tiny-depth-search",
    "passes": [
        {"pass": "layer_drop", "keep": 1, "strategy": "first"},
        {"pass": "distill", "loss": "embedding_mse", "epochs": 2, "lr": 0.01},
    ],
    "export": {"exporter": "torchscript", "parity": {"atol": 1e-3}},
    "report": {"warmup": 1, "iterations": 4, "max_seconds": 0.2},
    "search": {
        "objective": "size",
        "batch_size": 4,
        "max_drop": 100.0,
        "depth_ratios": [0.5],
        "head_ratios": [0.0, 0.5],
        "ffn_ratios": [0.0],
        "quantize": ["none"],
        "distill_fractions": [0.5, 1.0],
        "promote": 1.0,
        "validation_batches": 1,
    },
}


def mean_embedding(predict, batches) -> float:
    """Moves with every weight, so a reproduction must match exactly."""
    values = [float(predict(inputs).float().abs().mean()) for inputs, _ in batches]
    return sum(values) / len(values)


def task_data() -> TaskData:
    data = token_data(batches=2).eval
    return TaskData(eval=data, train=data, validation=data[:1] + data[1:], calibration=data[:1])


def test_depth_candidates_drop_blocks_once_and_the_recipe_reproduces(tmp_path, monkeypatch):
    monkeypatch.setattr("export.measure.benchmark.ROUNDS", 2)
    monkeypatch.setattr(trials_module, "TRIAL_TIMING", {"warmup": 1, "iterations": 4, "max_seconds": 0.2})
    drops, prunes = [], []
    counting(monkeypatch, "layer_drop", drops)
    counting(monkeypatch, "structured_prune", prunes)
    torch.manual_seed(0)
    result = compress.search(tiny_bert(), RECIPE, task_data(), out_dir=tmp_path / "s", evaluator=mean_embedding)

    labels = [t["label"] for t in result.trials]
    assert labels == [
        "fp32 baseline",
        "depth 0.5, distill 1 epochs",  # the safest candidate first
        "depth 0.5, heads 0.5, distill 1 epochs",
        "depth 0.5, heads 0.5, distill 2 epochs",
        "depth 0.5, distill 2 epochs",
    ]
    # One drop per candidate and one head cut, on the first rung only: the finalists load their cut stages.
    assert (len(drops), len(prunes)) == (2, 1)
    assert [t["stages_reused"] for t in result.trials[3:]] == [3, 2]  # baseline, drop(, heads) | distill
    # Both candidates are one block deep; the one without its heads cut is larger.
    depth_only = next(t for t in result.trials[3:] if "heads" not in t["label"])
    assert result.chosen["trial"] != depth_only["key"]
    assert result.chosen["size_bytes"] < depth_only["points"][0]["size_bytes"]

    written = compress.load_recipe(result.recipe_path)
    assert [p.pass_name for p in written.passes] == ["layer_drop", "structured_prune", "distill"]
    assert (written.passes[0].ratio, written.passes[0].strategy) == (0.5, "first")
    torch.manual_seed(0)
    data = task_data()
    predict = rerun_artifact(tiny_bert(), result, data, mean_embedding, tmp_path / "again")
    assert mean_embedding(predict, data.validation) == result.chosen["validation_metric"]
