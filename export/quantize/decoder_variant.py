"""The int4 artifact of a decoder with its KV cache, in ``modelpress run``.

The generic int4 path (``variants``) packs every MatMul alike. A decoder needs more, all measured on the
real file in ONNX Runtime: ``quantize_decoder``'s weight plan (the embedding as GatherBlockQuantized,
the tied LM head on its own copy at 4 or 8 bits or float, chosen blocks at 8 bits or float), and the
``accuracy_level`` of each kind of weight. Level 4 (int8 activations per block) is the fast CPU kernel,
but it moves teacher-forced top-1 on outlier-heavy models (onnxruntime#29849; SmolLM2 loses ~0.1 of
top-1 at level 4 with its weights exact); level 1 (fp32 activations) is exact there and slower (about
3x per MatMul at batch 1 on AVX2, ``reports/benchmarks/smollm2.md``). So ``accuracy_level: auto``
starts from level 4 everywhere and, while teacher-forced top-1 on the budget split stays under the
recipe's floor (``quantized_min_top1_agreement`` + ``LEVEL_MARGIN``), moves one kind of weight (the
same slot of every block, e.g. every qkv_proj, or the LM head) to level 1, the kinds taken in order of
measured top-1 gain per weight moved (level 1's cost grows with the weights it multiplies). Every
trial is in the record with its top-1. Before choosing, every level this CPU offers (``int4_levels.
offered_levels``: 0, 1 and 4, plus fp16 and bf16 where the CPU has them) is surveyed on all packed
nodes at once: top-1 on the budget split and one batch-1 decode step in ONNX Runtime, the levels
taking turns, so the report shows what each level costs and gains on this machine.
"""

import math
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from compress.core import log
from compress.models.data import TaskData
from compress.models.evaluate import Evaluator
from compress.recipe.schema import Recipe, usable_cores
from export.errors import ExportError
from export.onnx.exporter import export_onnx
from export.onnx.validate import quantized_parity
from export.quantize.records import checked, quantized_record
from export.runfolder.artifacts import artifacts_dir
from export.runfolder.language import token_batches

# Top-1 the auto choice keeps above the floor on the budget split, so the eval split's gate holds too.
LEVEL_MARGIN = 0.01
FAST_LEVEL, EXACT_LEVEL = 4, 1
MIN_GAIN = 1e-6
SURVEY_PAST, SURVEY_STEPS, SURVEY_ROUNDS = 32, 8, 5


def _slots(decisions) -> dict[str, list[str]]:
    """Kind of weight -> its packed MatMul nodes (from ``quantize_decoder``'s decisions): the LM head, and
    each position within a block, named by the node path with the layer index taken out where the graph
    names its nodes (the builder's: ``attn/qkv_proj/MatMul``), else by position."""
    blocks: dict[str, list[str]] = {}
    for decision in decisions:
        if decision.op == "MatMul" and decision.precision != "float":
            blocks.setdefault(decision.role, []).append(decision.node)
    head = blocks.pop("lm_head", [])
    slots: dict[str, list[str]] = {}
    for position, first in enumerate(next(iter(blocks.values()), [])):
        label = re.sub(r"^.*?layers\.\d+/", "", first) if "layers." in first else f"block slot {position}"
        slots[label] = [nodes[position] for nodes in blocks.values() if position < len(nodes)]
    return {**slots, **({"lm_head": head} if head else {})}


def _set_levels(model: onnx.ModelProto, levels: dict[str, int]) -> None:
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            level = levels.get(node.name.rpartition("_Q")[0])
            if level is None:
                continue
            for attribute in node.attribute:
                if attribute.name == "accuracy_level":
                    attribute.i = level
                    break
            else:
                node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))


def _top1_measure(reference: torch.nn.Module, batches: list[dict], work: Path):
    """A function: levels -> teacher-forced top-1 of the file with those levels against ``reference``."""
    from export.decoder.parity import _onnx_step, empty_past, onnx_session, positions

    expected = []
    with torch.no_grad():
        for batch in batches:
            expected.append(reference(**batch).logits.argmax(-1))

    def measure(model: onnx.ModelProto, levels: dict[str, int], trial: Path = work / "levels.onnx") -> float:
        _set_levels(model, levels)
        onnx.save(model, str(trial))
        session = onnx_session(trial)
        hits = total = 0
        for batch, tokens in zip(batches, expected):
            mask = batch["attention_mask"].long()
            feed = {**batch, "position_ids": positions(mask, mask.shape[1])}
            logits, _ = _onnx_step(session, feed, empty_past(session, mask.shape[0]))
            valid = mask.bool()
            hits += int((logits.argmax(-1)[valid] == tokens[valid]).sum())
            total += int(valid.sum())
        return hits / max(total, 1)

    return measure


def _decode_step_ms(files: list[Path], threads: int) -> list[float]:
    """Median ms of one batch-1 decode step after a ``SURVEY_PAST``-token prompt, per file; the files take
    turns for ``SURVEY_ROUNDS`` rounds so that machine load hits them alike."""
    from export.decoder.parity import _onnx_step, empty_past, onnx_session, positions

    mask = torch.ones((1, SURVEY_PAST), dtype=torch.long)
    prompt = {"input_ids": mask.clone(), "attention_mask": mask, "position_ids": positions(mask, SURVEY_PAST)}
    step = {"input_ids": np.ones((1, 1), np.int64), "attention_mask": np.ones((1, SURVEY_PAST + 1), np.int64),
            "position_ids": np.full((1, 1), SURVEY_PAST, np.int64)}  # fmt: skip
    runs = []
    for path in files:
        session = onnx_session(path, threads)
        _, past = _onnx_step(session, prompt, empty_past(session, 1))
        names = {spec.name for spec in session.get_inputs()}
        runs.append((session, {**{k: v for k, v in step.items() if k in names}, **past}))
    timings: list[list[float]] = [[] for _ in files]
    for _ in range(SURVEY_ROUNDS):
        for index, (session, feed) in enumerate(runs):
            start = time.perf_counter()
            for _ in range(SURVEY_STEPS):
                session.run(None, feed)
            timings[index].append((time.perf_counter() - start) * 1000 / SURVEY_STEPS)
    return [round(statistics.median(values), 3) for values in timings]


def survey_levels(model: onnx.ModelProto, slots: dict[str, list[str]], measure, work: Path, threads: int) -> list:
    """Every level on every packed node: top-1 (``measure``) and a decode step (see the module docstring)."""
    from export.quantize.int4_levels import offered_levels

    names = [name for group in slots.values() for name in group]
    rows, files = [], []
    for level in offered_levels():
        files.append(work / f"level{level}.onnx")
        rows.append({"level": level, "top1": round(measure(model, dict.fromkeys(names, level), files[-1]), 5)})
    for row, ms in zip(rows, _decode_step_ms(files, threads)):
        row.update(decode_step_ms=ms, past_tokens=SURVEY_PAST, rounds=SURVEY_ROUNDS)
    exact = next(row["decode_step_ms"] for row in rows if row["level"] == EXACT_LEVEL)
    for row in rows:
        row["speed_vs_level_1"] = round(exact / row["decode_step_ms"], 3)
    for path in files:
        path.unlink()
    return rows


def choose_levels(
    model: onnx.ModelProto, slots: dict[str, list[str]], measure, floor: float, weights: dict[str, int] | None = None
) -> dict:
    """Set each packed node's accuracy level by measured sensitivity (see the module docstring); the record.
    ``weights``: each kind's weight count, the cost of its move (level 1 is slower per weight); default:
    its node count."""
    weights = weights or {label: len(names) for label, names in slots.items()}
    levels = {name: FAST_LEVEL for names in slots.values() for name in names}
    top1 = measure(model, levels)
    trials, chosen = [{"level 1": [], "top1": round(top1, 5)}], []
    if top1 < floor:
        single = {}
        for label, names in slots.items():
            single[label] = measure(model, {**levels, **dict.fromkeys(names, EXACT_LEVEL)})
            trials.append({"level 1": [label], "top1": round(single[label], 5)})
        gain = {label: value - trials[0]["top1"] for label, value in single.items()}
        helped = [label for label in gain if gain[label] > MIN_GAIN]  # a tie is rounding, not sensitivity
        for label in sorted(helped, key=lambda lab: -gain[lab] / weights[lab]):
            chosen.append(label)
            levels.update(dict.fromkeys(slots[label], EXACT_LEVEL))
            top1 = single[label] if len(chosen) == 1 else measure(model, levels)
            if len(chosen) > 1:
                trials.append({"level 1": list(chosen), "top1": round(top1, 5)})
            if top1 >= floor:
                break
    top1 = round(top1, 5)
    reason = f"level {FAST_LEVEL} everywhere: top-1 {top1} >= {floor}"
    if not chosen and top1 < floor:
        reason = f"level {FAST_LEVEL} everywhere: no kind of weight gains top-1 at level {EXACT_LEVEL} (top-1 {top1})"
    if chosen:
        moved = ", ".join(chosen)
        reason = f"level {EXACT_LEVEL} for {moved} (top-1 {top1}, floor {floor}), level {FAST_LEVEL} elsewhere"
    if top1 < floor:
        reason += ": the floor is not reached on the budget split"
    _set_levels(model, levels)
    return {"floor": floor, "trials": trials, "level_1": chosen, "top1": top1, "reason": reason}


def _decoder_spec(spec) -> Any:
    from export.quantize.decoder import DecoderQuantSpec

    return DecoderQuantSpec(
        bits=4,
        algorithm=spec.algorithm,
        block_size=spec.block_size,
        accuracy_level=FAST_LEVEL if spec.accuracy_level == "auto" else spec.accuracy_level,
        symmetric=spec.symmetric,
        embedding="quantize" if spec.quantize_embeddings else "float",
        lm_head=spec.lm_head,
        block_precision=dict(spec.block_precision),
        nodes_to_exclude=tuple(spec.exclude_nodes),
        gptq=spec.gptq,
    )


def build_decoder_variant(
    spec, name: str, torch_model, recipe: Recipe, evaluator: Evaluator, data: TaskData, example_inputs, out_dir: Path
) -> dict:
    """Export the decoder with its cache, pack it per ``spec`` (``quantize_decoder``), choose the accuracy
    levels, check parity; return the artifact record."""
    from compress.core.io import write_atomic
    from export.quantize import int4_algorithms
    from export.quantize.decoder import quantize_decoder

    if int4_algorithms.ALGORITHMS[spec.algorithm].needs_calibration:
        raise ExportError(f"{spec.algorithm} calibrates on single forward passes; for a decoder choose "
                          "block_minimum, k_quant, hqq, rtn or default")  # fmt: skip
    if spec.max_metric_drop is not None:
        raise ExportError(f"{name}: a decoder's int4 has no per-node budget search; its floor is export.parity's "
                          "quantized_min_top1_agreement (accuracy_level auto) and lm_head / block_precision keep "
                          "weights wider: remove max_metric_drop from this variant and its pass")  # fmt: skip
    path = artifacts_dir(out_dir) / f"{name}.onnx"
    export = recipe.export
    with tempfile.TemporaryDirectory(prefix="modelpress-quant-") as scratch:
        work = Path(scratch)
        source = work / "source.onnx"
        _, made_by = export_onnx(
            torch_model, example_inputs, source, spec.opset or export.opset,
            kv_cache=True, decoder_graph=export.decoder_graph,
        )  # fmt: skip
        packed = work / "packed.onnx"
        plan = quantize_decoder(source, packed, _decoder_spec(spec))
        model = onnx.load(str(packed))
        levels = None
        if spec.accuracy_level == "auto":
            split = data.resolve(spec.budget_split)
            tokens = token_batches(evaluator, data, split, export.parity.samples)
            batches = [{"input_ids": ids, "attention_mask": mask} for ids, mask in tokens]
            floor = round(export.parity.quantized_min_top1_agreement + LEVEL_MARGIN, 6)
            slots = _slots(plan.decisions)
            size = {d.node: math.prod(d.shape) for d in plan.decisions}
            weights = {label: sum(size[node] for node in nodes) for label, nodes in slots.items()}
            measure = _top1_measure(torch_model, batches, work)
            survey = survey_levels(model, slots, measure, work, recipe.report.threads or usable_cores())
            levels = choose_levels(model, slots, measure, floor, weights)
            fast = next(row for row in survey if row["level"] == FAST_LEVEL)
            speed = fast["speed_vs_level_1"]
            levels["reason"] += f"; level {FAST_LEVEL} decodes {speed:.2f}x level {EXACT_LEVEL}'s speed here"
            levels.update(split=split, survey=survey)
            log.info(f"  {name}: accuracy levels: {levels['reason']}")
        write_atomic(path, lambda tmp: onnx.save(model, str(tmp)))
    decisions = plan.decisions
    record = quantized_record(
        name,
        path,
        out_dir,
        spec,
        precision="int4",
        scheme="int4",
        quantized_nodes=sum(d.precision != "float" for d in decisions),
        float_nodes=[d.node for d in decisions if d.precision == "float"],
        float_reasons={d.node: d.reason for d in decisions if d.precision == "float"},
        weights={d.precision: sum(x.precision == d.precision for x in decisions) for d in decisions},
        lm_head=next((f"{d.precision} ({d.reason})" for d in decisions if d.role == "lm_head"), None),
        decoder_graph=made_by.get("decoder_graph"),
        kv_cache=True,
        **({"accuracy_levels": levels} if levels else {}),
    )
    why = "quantized output too far from fp32"
    return checked(record, path, torch_model, quantized_parity(recipe), evaluator, data, why)
