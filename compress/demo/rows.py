"""A small MLP on scikit-learn's digits that reads each image row as a token: the budget demo model.

Every Linear runs on (batch, rows, features) tensors, so each one exports as an ONNX MatMul,
the op 4-bit weight-only quantization (MatMulNBits) packs; a 2-D Linear would export as Gemm,
which it leaves alone. Layers: a per-row embedding, a mixing layer across rows, a hidden layer,
and a classifier over all rows (kept 3-D, batch x 1 x features). ``pretrained_model`` trains it (seeded, a fixed
number of epochs, seconds on 2 cores) with the demo CNN's training loop and data.
"""

import torch
import torch.nn.functional as F
from torch import nn

from compress.demo.digits import IMAGE_SIZE, train

TRAIN_EPOCHS = 12


class DigitsRowMLP(nn.Module):
    def __init__(self, width: int = 64, num_classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(IMAGE_SIZE, width)
        self.mix = nn.Linear(IMAGE_SIZE, IMAGE_SIZE)  # across rows: each feature sees the whole column
        self.hidden = nn.Linear(width, width)
        self.classifier = nn.Linear(IMAGE_SIZE * width, num_classes)

    def forward(self, x):
        rows = F.relu(self.embed(x.flatten(1, 2)))  # (batch, 1, 16, 16) -> (batch, 16 rows, width)
        rows = rows + F.relu(self.mix(rows.transpose(1, 2))).transpose(1, 2)
        rows = F.relu(self.hidden(rows))
        return self.classifier(rows.flatten(1).unsqueeze(1)).squeeze(1)


def pretrained_model(epochs: int = TRAIN_EPOCHS, seed: int = 0) -> DigitsRowMLP:
    """The model trained on digits from weights drawn from ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitsRowMLP()
    return train(model, epochs=epochs, seed=seed)
