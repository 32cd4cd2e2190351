"""Suite smollm2-run: the folders of a ``modelpress run compress/recipes/smollm2-int4.yaml`` (or
``smollm2-full.yaml``) beside onnxruntime-genai's own builder int4, in one generation benchmark.

The run's report already times its own folders (the float ``compressed`` and ``int4``) against each
other. The users' default, ``python -m onnxruntime_genai.models.builder -p int4 -e cpu`` on the same
dequantized model, is not a run artifact, so this suite adds it: the three folders decode in
og.Generator, rows taking turns in processes of their own (``export/measure/generation.py``) at batch 1
and 8 with every core, and the two int4 files (and a pruned run's fp32 ``compressed``) are scored
against torch fp32, the dequantized model, on the first 64 STS-B dev sentences (perplexity,
teacher-forced top-1, greedy agreement; ``benchmarks/smollm2.py``'s quality).

``python -m benchmarks smollm2-run --run-folder runs/smollm2-int4`` (default folder:
``$MODELPRESS_SMOLLM2_RUN`` or ``runs/smollm2-int4``).
"""

import json
import os
from pathlib import Path

import torch

from benchmarks.smollm2 import (
    NEW_TOKENS,
    PROMPT_TOKENS,
    _quality,
    dev_sentences,
    file_bytes,
    genai_builder_int4,
    hf_folder,
    nbits_facts,
    quality_table,
    text_batches,
)  # fmt: skip
from compress.core.io import write_json_atomic, write_text_atomic
from compress.recipe.schema import usable_cores
from export.measure.benchmark import load_per_core


def run(out_dir: Path, work: Path, quick: bool = False, run_folder: Path | None = None) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from export.measure.generation import GenerationRow, benchmark_generation, markdown_table

    folder = Path(run_folder or os.environ.get("MODELPRESS_SMOLLM2_RUN", "runs/smollm2-int4"))
    records = {r["name"]: r for r in json.loads((folder / "report.json").read_text())["artifacts"]}
    work.mkdir(parents=True, exist_ok=True)
    load_start = load_per_core()
    hf = hf_folder(work)
    builder = genai_builder_int4(hf, work / "genai-builder-int4")
    tokenizer = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    sentences = dev_sentences(16 if quick else 64)
    prompts = [tokenizer(s, return_tensors="pt").input_ids for s in sentences[: 3 if quick else 8]]
    artifacts = {"run int4": folder / records["int4"]["path"], "genai builder int4": builder / "model.onnx"}
    # The fp32 reference: the run's baseline where its passes changed the model (smollm2-full), else
    # its compressed artifact, which is then the same model (smollm2-int4).
    fp32 = "baseline" if "baseline" in records else "compressed"
    pruned = {"run compressed": folder / records["compressed"]["path"]} if fp32 == "baseline" else {}
    quality = _quality(model, tokenizer, pruned | artifacts, text_batches(tokenizer, sentences, 8), prompts)
    rows = [
        GenerationRow(f"run fp32 ({fp32})", "genai", folder / records[fp32]["genai_folder"]),
        *(GenerationRow(name, "genai", folder / records["compressed"]["genai_folder"]) for name in pruned),
        GenerationRow("run int4", "genai", folder / records["int4"]["genai_folder"]),
        GenerationRow("genai builder int4", "genai", builder),
    ]
    threads = usable_cores()
    report = benchmark_generation(
        rows, model.config.vocab_size, (1,) if quick else (1, 8), PROMPT_TOKENS, NEW_TOKENS, 3 if quick else 5,
        threads, baseline=rows[0].name,
    )  # fmt: skip
    body = {
        "suite": "smollm2-run" + ("-quick" if quick else ""),
        "context": {
            "run": f"{folder} (report.json created {json.loads((folder / 'report.json').read_text())['created']})",
            "int4 (run)": f"{nbits_facts(artifacts['run int4'])}; levels: "
            f"{records['int4'].get('accuracy_levels', {}).get('reason', 'as the recipe set them')}",
            "genai builder": nbits_facts(builder / "model.onnx"),
            "speed": f"og.Generator, prompt {PROMPT_TOKENS} random ids, {NEW_TOKENS} greedy tokens, {threads} "
            "threads, rows taking turns",
            "quality": f"first {len(sentences)} STS-B dev sentences against torch fp32",
            "load per core": f"at start {load_start}, before/after timing {report.load_before} / {report.load_after}",
        },
        "sizes_mb": {name: round(file_bytes(path) / 1e6, 1) for name, path in (pruned | artifacts).items()}
        | {f"run fp32 ({fp32})": round(file_bytes(folder / records[fp32]["path"]) / 1e6, 1)},
        "quality": quality,
        "speed": report.to_dict(),
    }
    lines = [f"# Benchmark: {body['suite']}", "", *(f"- {k}: {v}" for k, v in body["context"].items()), ""]
    lines += [*quality_table(body), "", *markdown_table(report), ""]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / f"{body['suite']}.md", "\n".join(lines))
    return write_json_atomic(out_dir / f"{body['suite']}.json", body)
