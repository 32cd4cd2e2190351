"""What this CPU's int8 kernels can hold: on x86 without VNNI (AVX2 only), ONNX Runtime multiplies
uint8 activations by int8 weights with ``vpmaddubsw``, which adds two products into an int16 and
saturates: 255 x 127 x 2 = 64,770 does not fit in 32,767. Weights on 7 bits (``reduce_range``,
[-64, 63]: 255 x 63 x 2 = 32,130) always fit. VNNI (AVX512-VNNI, AVX-VNNI, AMX) accumulates in
int32 and needs no such care; neither do ARM's int8 dot products.

Seen here on an AVX2-only AMD EPYC: a small MLP's int8 dynamic artifact fell to cosine 0.54 against
fp32 at full range and kept 0.999 with 7-bit weights; a QAT artifact differed from its fake-quant
model by two output steps instead of one.
"""

import functools
import platform
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def int8_saturates() -> bool:
    """True where ONNX Runtime's u8s8 kernels may saturate: an x86 CPU whose flags name no VNNI (on an
    x86 system without /proc/cpuinfo, assumed: the safe side)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = None
    return saturates_on(platform.machine(), cpuinfo)


def saturates_on(machine: str, cpuinfo: str | None) -> bool:
    """``int8_saturates`` for a machine name and the text of its /proc/cpuinfo (None: unknown)."""
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    if cpuinfo is None:
        return True
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return not set(flags) & set(VNNI_FLAGS)


def reduce_range(setting: "bool | str") -> bool:
    """A recipe's ``reduce_range`` (``auto``, true or false) on this CPU."""
    return int8_saturates() if setting == "auto" else bool(setting)
