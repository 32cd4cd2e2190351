"""ONNX export, verification in ONNX Runtime, benchmarking and the report.

onnxruntime is imported only when a session is made, so importing this package stays light.
"""

from export.errors import ExportError, ParityError, ShapeMismatch, ToleranceExceeded
from export.onnx.exporter import OnnxModel, to_onnx
from export.report.build import build_report, write_report
from export.report.render import render_html, render_markdown

__all__ = [
    "ExportError",
    "OnnxModel",
    "ParityError",
    "ShapeMismatch",
    "ToleranceExceeded",
    "build_report",
    "render_html",
    "render_markdown",
    "to_onnx",
    "write_report",
]
