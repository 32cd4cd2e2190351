"""Helpers the search tests share: counting a pass's applications, rerunning a written recipe."""

import dataclasses

from compress.api import run
from compress.recipe import registry
from export.onnx.runtime import make_session, ort_predictor


def tiny_search_recipe(name: str, prune_ratios: list[float], **top) -> dict:
    """A search recipe on the tiny MLP whose trials take a second: size is the objective (no timing
    decides), no quantization, one validation batch."""
    return {
        "name": name,
        "model": {"factory": "tests.tiny_models:mlp"},
        "data": {"factory": "tests.tiny_models:vector_data"},
        **top,
        "export": {"exporter": "torchscript"},
        "report": {"warmup": 1, "iterations": 3, "max_seconds": 0.2},
        "search": {
            "objective": "size",
            "batch_size": 2,
            "max_drop": 100.0,
            "quantize": ["none"],
            "validation_batches": 1,
            "prune_ratios": prune_ratios,
            "distill_fractions": [1.0],
        },
    }


def counting(monkeypatch, name: str, calls: list, interrupt_at: int | None = None):
    """Wrap pass ``name`` so its applications are counted (and the ``interrupt_at``-th is a Ctrl-C)."""
    spec = registry.get_pass(name)

    def spy(model, config, ctx):
        calls.append(name)
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return spec.apply(model, config, ctx)

    monkeypatch.setitem(registry._PASSES, name, dataclasses.replace(spec, apply=spy))


def rerun_artifact(fresh_model, result, data, evaluator, out):
    """``modelpress run`` on the search's written recipe; a predictor of the chosen point's artifact."""
    again = run(fresh_model, result.recipe_path, data, out_dir=out, evaluator=evaluator, report=False)
    artifact = next(a for a in again.artifacts if a["name"] == result.chosen["name"])
    return ort_predictor(make_session(out / artifact["path"]))


def held_accuracy(predict, batches) -> float:
    """Accuracy; but the first spawned worker process to score (with MODELPRESS_TEST_HOLD set) writes its pid
    there and waits, mid-trial, for the test to SIGKILL it: a kill at a known point, not at a guessed time."""
    import multiprocessing
    import os
    import time
    from pathlib import Path

    from compress.models.evaluate import accuracy

    hold = os.environ.get("MODELPRESS_TEST_HOLD")
    if hold and multiprocessing.parent_process() is not None:
        try:
            fd = os.open(Path(hold) / "held", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            for _ in range(3000):  # the test kills this process; past that, the test has failed anyway
                time.sleep(0.1)
    return accuracy(predict, batches)
