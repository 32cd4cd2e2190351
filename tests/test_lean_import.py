"""``import compress`` stays light: no onnxruntime, onnx or transformers until needed."""

import subprocess
import sys


def test_import_compress_does_not_load_heavy_runtimes():
    code = (
        "import sys, compress, compress.passes\n"
        "heavy = [m for m in ('onnxruntime', 'onnx', 'transformers', 'bitsandbytes') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
