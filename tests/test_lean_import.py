"""``import compress`` stays light: no onnxruntime, onnx, transformers or optuna (the search's study) until needed."""

import subprocess
import sys


def test_import_compress_does_not_load_heavy_runtimes():
    code = (
        "import sys, compress, compress.passes\n"
        "names = ('onnxruntime', 'onnx', 'transformers', 'bitsandbytes', 'optuna', 'sqlalchemy')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
