"""A small residual CNN on scikit-learn's digits (real 8x8 scans, upsampled to 16x16).

``pretrained_model`` trains it the first time (about 15 s on 2 cores, ~99% test
accuracy) and caches the weights as safetensors; ``load_data`` returns the splits
the demo recipe uses. The test split (eval) and the validation split are held out
from training.
"""

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from compress.core import log
from compress.core.errors import OutputError
from compress.core.io import write_atomic
from compress.models.data import TaskData

CACHE_NAME = "digits_resnet-v2.safetensors"
IMAGE_SIZE = 16


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def _conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class DigitsResNet(nn.Module):
    """Stem, then per width a (strided) conv and a residual block; global pooling; linear classifier."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), num_classes: int = 10):
        super().__init__()
        layers, c_in = [], 1
        for i, width in enumerate(widths):
            layers += [_conv_bn(c_in, width, 1 if i == 0 else 2), ResidualBlock(width)]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def build_model(widths: tuple[int, ...] = (32, 64, 128), seed: int = 0) -> DigitsResNet:
    """The untrained model, its initial weights drawn from ``seed`` (the global RNG is left as it was).

    Unseeded, every fresh demo started from other weights and reached another accuracy.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return DigitsResNet(tuple(widths))


def digits_tensors(seed: int = 0):
    """(x_train, y_train, x_val, y_val, x_test, y_test): images in [0, 1], 1x16x16, stratified 72/8/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=IMAGE_SIZE, mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=0.2, random_state=seed, stratify=labels)
    x_tr, x_va, y_tr, y_va = train_test_split(x_tr, y_tr, test_size=0.1, random_state=seed, stratify=y_tr)
    return x_tr, y_tr, x_va, y_va, x_te, y_te


def shifted(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augmentation: the batch moved by up to one pixel in each direction."""
    return torch.roll(images, tuple(torch.randint(-1, 2, (2,), generator=generator).tolist()), dims=(2, 3))


def _batches(x, y, batch_size):
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def load_data(batch_size: int = 64, calibration_samples: int = 256) -> TaskData:
    """Test split as eval; shuffled, shifted train batches; validation for checkpoint selection.

    The train order and shifts come from the global RNG, which the pipeline seeds before every
    pass (``recipe.seed + stage index``), so each stage sees the same batches in every run.
    """
    x_tr, y_tr, x_va, y_va, x_te, y_te = digits_tensors()

    def train():
        order = torch.randperm(len(x_tr))
        return [(shifted(x), y) for x, y in _batches(x_tr[order], y_tr[order], batch_size)]

    return TaskData(
        eval=_batches(x_te, y_te, 128),
        train=train,
        validation=_batches(x_va, y_va, 128),
        calibration=_batches(x_tr[:calibration_samples], y_tr[:calibration_samples], 128),
    )


def train(model: nn.Module, epochs: int = 10, lr: float = 3e-3, seed: int = 0) -> nn.Module:
    """Train with AdamW and a one-cycle schedule; small random shifts as augmentation.

    Deterministic on CPU for a given thread count: data order and shifts come from a generator
    seeded with ``seed`` (not the global RNG, which other code may have advanced), and torch is
    asked for deterministic algorithms. Intra-op threads can change the order of float sums,
    so another core count may give other last bits.
    """
    generator = torch.Generator().manual_seed(seed)
    x_tr, y_tr = digits_tensors()[:2]
    steps_per_epoch = (len(x_tr) + 63) // 64
    optimizer = torch.optim.AdamW(model.parameters(), lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    model.train()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(epochs):
            order = torch.randperm(len(x_tr), generator=generator)
            for start in range(0, len(x_tr), 64):
                idx = order[start : start + 64]
                loss = F.cross_entropy(model(shifted(x_tr[idx], generator)), y_tr[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    return model.eval()


def cache_dir() -> Path:
    return Path(os.environ.get("MODELPRESS_CACHE", Path.home() / ".cache" / "modelpress"))


def pretrained_model(epochs: int = 10) -> DigitsResNet:
    """The trained demo model: from the cache, or trained now and cached."""
    from safetensors.torch import load_model, save_model

    model = build_model()
    path = cache_dir() / CACHE_NAME
    if path.is_file():
        try:
            load_model(model, str(path))
            return model.eval()
        except Exception as exc:  # noqa: BLE001  (a corrupt cache is ours to rebuild, whatever the reader says)
            log.warn(f"demo cache {path} is unreadable ({type(exc).__name__}); training the model again")
            model = build_model()
    log.info(f"training the demo model on digits ({epochs} epochs, cached at {path})")
    train(model, epochs)
    try:
        write_atomic(path, lambda tmp: save_model(model, str(tmp)))  # atomic: never a half-written cache
    except (OSError, OutputError) as exc:  # an unwritable cache costs a retrain next time, not this run
        log.warn(f"demo cache {path} cannot be written ({exc}); the trained model is used uncached")
    return model
