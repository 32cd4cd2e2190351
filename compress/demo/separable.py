"""A depthwise-separable (MobileNet-style) CNN on scikit-learn's digits: the QAT demo model.

Depthwise convolutions are where post-training int8 with per-tensor activations hurts: once
BatchNorm is folded in, their channels span very different ranges and one scale per tensor must
cover the widest. ``pretrained_model`` trains it (seeded, a fixed number of epochs, seconds on
2 cores) with the demo CNN's training loop and data.

Trained on digits it still holds int8 well, so ``outlier_model`` gives it what breaks per-tensor
activations in real networks (LLM outlier features, unbalanced channels after BatchNorm folding):
a few stem channels carry values ``OUTLIER_SCALE`` times larger, and the depthwise filters reading
them are as many times smaller. The float function is unchanged (ReLU commutes with a positive
scale); the stem output's one int8 scale must now span the outliers, and the other channels fall to
a few levels: post-training int8 static loses about 3 points, ``qat`` with ``learn_ranges`` none.
"""

import torch
import torch.nn.functional as F
from torch import nn

from compress.demo.digits import train

TRAIN_EPOCHS = 12
OUTLIER_SCALE = 30.0
OUTLIER_CHANNELS = 2


def _separable(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU(),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


class DigitsSeparableCNN(nn.Module):
    """A 3x3 stem, then depthwise 3x3 + pointwise 1x1 blocks; global pooling; a linear classifier."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 64), num_classes: int = 10):
        super().__init__()
        layers = [nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
        for i, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
            layers += _separable(c_in, c_out, 2 if i < 2 else 1)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def pretrained_model(epochs: int = TRAIN_EPOCHS, seed: int = 0) -> DigitsSeparableCNN:
    """The model trained on digits from weights drawn from ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitsSeparableCNN()
    return train(model, epochs=epochs, seed=seed)


def outlier_model(
    scale: float = OUTLIER_SCALE, channels: int = OUTLIER_CHANNELS, epochs: int = TRAIN_EPOCHS, seed: int = 0
) -> DigitsSeparableCNN:
    """``pretrained_model`` with its first ``channels`` stem channels ``scale`` times larger, the same function."""
    model = pretrained_model(epochs, seed).eval()
    stem_norm, depthwise = model.features[1], model.features[3]
    with torch.no_grad():
        stem_norm.weight[:channels] *= scale
        stem_norm.bias[:channels] *= scale
        depthwise.weight[:channels] /= scale
    return model
