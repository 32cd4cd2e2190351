"""The int4 ``accuracy_level`` sweep of a decoder: decode speed and agreement at each level, and the choice.

``accuracy_level`` is MatMulNBits' compute type, independent of how the 4-bit weights were chosen:
0 leaves it to the kernel (fp32 on CPU), 1 fp32, 2 fp16, 3 bf16, 4 int8 (activations quantized per
block; the fastest on x86 with AVX2/AVX-512 VNNI). ORT accepts every level on every CPU and falls back
to fp32 compute where the CPU lacks the arithmetic, so a level counts as offered here when it differs
from fp32 on this CPU (``offered_levels``); every offered level is then measured, never assumed.

Each level's artifact is written from the same fp32 decoder with the same weights (only the
attribute differs), timed by ``generation.benchmark_generation`` beside the fp32 ONNX decoder (rows
taking turns), and scored by teacher-forced top-1 agreement with fp32 (``decoder.perplexity``) and
by greedy agreement of its continuations. ``choose_accuracy_level`` picks the fastest level whose
top-1 agreement is within ``MAX_TOP1_DROP`` of the best level's, and says why.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from export.measure.generation import GenerationReport, GenerationRow, benchmark_generation

# What each level computes in, and the CPU flags (from /proc/cpuinfo) it needs to differ from fp32.
LEVELS: dict[int, tuple[str, tuple[str, ...]]] = {
    0: ("kernel default (fp32 on CPU)", ()),
    1: ("fp32", ()),
    2: ("fp16", ("avx512_fp16", "asimdhp")),
    3: ("bf16", ("avx512_bf16", "amx_bf16", "bf16")),
    4: ("int8 (activations quantized per block)", ()),
}
MAX_TOP1_DROP = 0.01


@dataclass(frozen=True)
class LevelResult:
    level: int
    compute: str
    path: str
    decode_tokens_per_s: float
    decode_ratio: float  # against the fp32 ONNX decoder in the same run
    top1_agreement: float
    greedy_agreement: float
    unreliable: bool


def cpu_flags() -> set[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def offered_levels(flags: set[str] | None = None) -> list[int]:
    """Levels with their own arithmetic on this CPU: 0, 1 and 4 always; 2 and 3 where the flags say so."""
    flags = cpu_flags() if flags is None else flags
    return [level for level, (_, needs) in LEVELS.items() if not needs or flags & set(needs)]


def sweep(
    fp32: Path,
    folder: Path,
    spec,
    batches: list,
    vocab_size: int,
    levels: list[int] | None = None,
    **timing,
) -> tuple[list[LevelResult], GenerationReport]:
    """Write, time and score the int4 artifact of ``spec`` (a ``DecoderQuantSpec``) at each level.
    ``batches`` (token ids, masks) score top-1; ``timing`` goes to ``benchmark_generation``."""
    from export.decoder.parity import onnx_session
    from export.decoder.perplexity import language_scores, onnx_logits
    from export.quantize.decoder import quantize_decoder

    levels = offered_levels() if levels is None else levels
    paths = {}
    for level in levels:
        paths[level] = Path(folder) / f"int4-level{level}.onnx"
        quantize_decoder(fp32, paths[level], dataclasses.replace(spec, accuracy_level=level))
    candidates = {"fp32": onnx_logits(onnx_session(fp32))}
    candidates |= {f"level {level}": onnx_logits(onnx_session(path)) for level, path in paths.items()}
    scores = language_scores(candidates, batches, reference="fp32")
    rows = [GenerationRow("fp32", "onnx", Path(fp32))]
    rows += [GenerationRow(f"level {level}", "onnx", path) for level, path in paths.items()]
    report = benchmark_generation(rows, vocab_size, **{"batch_sizes": (1,), **timing})
    results = []
    for level, path in paths.items():
        figures = report.get(f"level {level}", report.figures[0].batch_size)
        results.append(
            LevelResult(
                level=level, compute=LEVELS[level][0], path=str(path),
                decode_tokens_per_s=figures.decode_tokens_per_s, decode_ratio=figures.decode_ratio,
                top1_agreement=scores[f"level {level}"].top1_agreement, greedy_agreement=figures.greedy_agreement,
                unreliable=figures.unreliable,
            )
        )  # fmt: skip
    return results, report


def choose_accuracy_level(results: list[LevelResult], max_top1_drop: float = MAX_TOP1_DROP) -> tuple[int, str]:
    """The fastest level whose top-1 agreement is within ``max_top1_drop`` of the best, with the reason."""
    best = max(r.top1_agreement for r in results)
    eligible = [r for r in results if r.top1_agreement >= best - max_top1_drop]
    chosen = max(eligible, key=lambda r: r.decode_tokens_per_s)
    others = ", ".join(
        f"level {r.level} {r.decode_tokens_per_s:.1f} tok/s, top-1 {r.top1_agreement:.3f}"
        for r in results
        if r is not chosen
    )
    dropped = [r.level for r in results if r not in eligible]
    reason = (
        f"level {chosen.level} ({chosen.compute}): fastest decode, {chosen.decode_tokens_per_s:.1f} tok/s "
        f"({chosen.decode_ratio:.2f}x fp32 ORT), top-1 agreement {chosen.top1_agreement:.3f} within "
        f"{max_top1_drop} of the best ({best:.3f}); others: {others}"
    )
    if dropped:
        reason += f"; levels {dropped} lose more top-1 than that"
    if chosen.unreliable:
        reason += "; its timing is marked unreliable (spread or load): re-measure on an idle machine"
    return chosen.level, reason
