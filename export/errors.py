"""Typed export failures: each names the artifact, the output and the measured gap."""

from compress.core.errors import ModelpressError


class ExportError(ModelpressError):
    """torch.onnx.export or onnx.checker rejected the model."""


class ParityError(ExportError):
    """ONNX Runtime and torch disagree on held-out inputs."""


class ShapeMismatch(ParityError):
    pass


class ToleranceExceeded(ParityError):
    pass
