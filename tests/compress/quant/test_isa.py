"""Which CPUs' int8 kernels saturate at 8-bit weights, and what reduce_range: auto resolves to."""

import numpy as np
import pytest

from compress.quant.isa import int8_saturates, reduce_range, saturates_on

AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
VNNI = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni\n"


def test_x86_without_vnni_saturates_and_vnni_or_arm_does_not():
    assert saturates_on("x86_64", AVX2)
    assert not saturates_on("x86_64", VNNI)
    assert not saturates_on("x86_64", AVX2.replace("avx2", "avx2 avx_vnni"))
    assert saturates_on("AMD64", None)  # no /proc/cpuinfo to read: the safe side
    assert not saturates_on("aarch64", AVX2)


def test_auto_follows_this_cpu_and_a_recipe_value_wins():
    assert reduce_range("auto") is int8_saturates()
    assert reduce_range(True) is True and reduce_range(False) is False


@pytest.mark.skipif(not int8_saturates(), reason="this CPU has VNNI: its int8 kernels do not saturate")
def test_full_range_int8_collapses_here_and_auto_keeps_it(tmp_path):
    """The reason for auto, on this CPU: ORT's u8s8 dynamic int8 at 8-bit weights against 7-bit ones."""
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.onnx.exporter import to_onnx
    from tests.tiny_models import mlp, vector_data

    model, x = mlp(), vector_data().eval[0][0]
    to_onnx(model, x[:2], tmp_path / "f.onnx")
    with torch.no_grad():
        expected = model(x).numpy()
    cosines = {}
    for reduced in (False, True):
        target = tmp_path / f"q{reduced}.onnx"
        quantize_dynamic(
            tmp_path / "f.onnx", target, per_channel=True, reduce_range=reduced, weight_type=QuantType.QInt8
        )
        session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        cosines[reduced] = float(cos.min())
    assert cosines[True] >= 0.99 > cosines[False]
