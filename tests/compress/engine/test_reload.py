"""compress.load rebuilds a run's compressed model from its stage weights and recorded pruning."""

import pytest
import torch

import compress
from compress.core.errors import InputError
from tests.tiny_models import TINY_ARCHS

QUICK = {"batch_sizes": [1], "warmup": 0, "iterations": 1, "max_seconds": 0.1}


def test_load_after_structured_prune_and_distill_equals_the_run_model(tmp_path):
    factory, data_factory = TINY_ARCHS["residual_cnn"]
    data = data_factory()
    # round_to 1: the 8 channels are not wider than the default multiple, and the cut must be real
    passes = [{"pass": "structured_prune", "ratio": 0.5, "round_to": 1}, {"pass": "distill", "epochs": 1}]
    recipe = {"name": "reload", "passes": passes, "export": {"baseline": False}, "report": QUICK}
    result = compress.run(factory(), recipe, data=data, out_dir=tmp_path, report=False)
    inputs = data.eval[0][0]
    # From the Python API, the run folder names no factory: the uncompressed skeleton is passed.
    loaded = compress.load(tmp_path, model=factory())
    assert loaded.state_dict().keys() == result.model.state_dict().keys()
    assert sum(p.numel() for p in loaded.parameters()) == result.stages[-1].params
    assert torch.equal(loaded(inputs), result.model(inputs))
    pruned = compress.load(tmp_path, "structured_prune", model=factory())
    assert sum(p.numel() for p in pruned.parameters()) == result.stages[1].params
    with pytest.raises(InputError, match="names no model factory"):
        compress.load(tmp_path)
    with pytest.raises(InputError, match="no stage 'quantize'; completed stages: baseline, structured_prune, distill"):
        compress.load(tmp_path, "quantize", model=factory())
