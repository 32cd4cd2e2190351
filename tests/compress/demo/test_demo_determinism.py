"""The demo model trains to the same weights every time, whatever the global RNG state before."""

import torch

from compress.demo import digits


def test_demo_training_is_seeded_and_deterministic():
    # One epoch each (the demo trains ten): the same code path, at a tenth of the cost.
    first = digits.train(digits.build_model(), epochs=1).state_dict()
    torch.manual_seed(1234)
    torch.randn(17)  # another global RNG state must not change the result
    second = digits.train(digits.build_model(), epochs=1).state_dict()
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert not torch.are_deterministic_algorithms_enabled()  # restored for the caller
    other_seed = digits.train(digits.build_model(seed=1), epochs=1, seed=1).state_dict()
    assert not torch.equal(first["classifier.weight"], other_seed["classifier.weight"])
