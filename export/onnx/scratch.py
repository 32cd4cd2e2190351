"""A private working folder for tools that write temporary files into the current directory.

ONNX Runtime's symbolic shape inference (run by its quantizers and pre-processing) saves
``sym_shape_infer_temp.onnx`` and a ``<uuid>.data`` into the cwd, and the calibrators write
``augmented_model.onnx`` there; the ORT-format converter does the same. Those calls run with the
cwd switched to a temporary folder of modelpress's own, removed afterwards, so a run never leaves
files in the user's folder (or commits them into a repository).
"""

import contextlib
import os
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def own_cwd() -> Iterator[str]:
    """Run the block with the cwd in a fresh temporary folder; paths given to tools must be absolute."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="modelpress-ort-") as folder:
        os.chdir(folder)
        try:
            yield folder
        finally:
            os.chdir(previous)
