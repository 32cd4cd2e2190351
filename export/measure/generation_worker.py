"""One row of the generation benchmark, in a process of its own: ``python generation_worker.py ROW_JSON``.

Run as a script, not as ``export.measure.generation_worker``: importing the ``export`` package pulls
in torch, and a worker for an ONNX row must hold only its own runtime, or its peak resident memory
(``VmHWM`` of /proc/self/status, read at exit) would count torch's. So this file imports nothing of
modelpress, and each runtime only inside its row's functions.

Protocol, one JSON object a line: the worker answers its start with the resident memory after the
runtime import and after the model load; each ``{"prompt": [[ids]], "new_tokens": N}`` with the time
to the first token, the time of the remaining N - 1 decode steps, the tokens and its CPU seconds;
``{"quit": true}`` with its peak resident memory, then exits. Rows generate exactly the asked number
of tokens greedily (no early stop at an end-of-sequence id), so every row does the same work.
"""

import inspect
import json
import os
import sys
import time
from collections.abc import Callable

# Run as a script, Python puts this folder first on sys.path, where modelpress's ``profile.py``
# would shadow the standard library's (torch imports cProfile, which imports profile).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import numpy as np  # noqa: E402

Generate = Callable[[np.ndarray, int], tuple[float, float, list[list[int]]]]  # -> ttft s, decode s, tokens


def memory_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MiB."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"/proc/self/status has no {field}")


def _torch_row(path: str, threads: int) -> Generate:
    """fp32 transformers model, a manual greedy loop over its own cache (what ``generate`` does, minus
    its logits processors)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def generate(prompt: np.ndarray, new_tokens: int):
        ids = torch.from_numpy(prompt)
        mask = torch.ones_like(ids)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, use_cache=True)
            tokens = [out.logits[:, -1].argmax(-1)]
            first = time.perf_counter()
            for _ in range(new_tokens - 1):
                cache = out.cache if hasattr(out, "cache") else out.past_key_values
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
                out = model(input_ids=tokens[-1][:, None], attention_mask=mask, use_cache=True, **{cache_name: cache})
                tokens.append(out.logits[:, -1].argmax(-1))
        end = time.perf_counter()
        return first - start, end - first, torch.stack(tokens, 1).tolist()

    return generate


def _onnx_row(path: str, threads: int) -> Generate:
    """An exported decoder-with-past in ONNX Runtime, fed by hand: numpy in, ``present`` back as ``past``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inputs = {spec.name: spec for spec in session.get_inputs()}
    outputs = [spec.name for spec in session.get_outputs()]
    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16}

    def generate(prompt: np.ndarray, new_tokens: int):
        batch, length = prompt.shape
        past = {
            name: np.zeros((batch, spec.shape[1], 0, spec.shape[3]), dtypes[spec.type])
            for name, spec in inputs.items()
            if name.startswith("past_key_values.")
        }
        feed = {"input_ids": prompt, "attention_mask": np.ones((batch, length), np.int64)}
        positions = np.arange(length, dtype=np.int64)[None].repeat(batch, 0)
        tokens, first = [], 0.0
        start = time.perf_counter()
        for _ in range(new_tokens):
            if "position_ids" in inputs:
                feed["position_ids"] = positions
            result = dict(zip(outputs, session.run(None, {**feed, **past})))
            tokens.append(result["logits"][:, -1].argmax(-1).astype(np.int64))
            first = first or time.perf_counter()
            past = {n.replace("present.", "past_key_values.", 1): v for n, v in result.items() if n != "logits"}
            mask = feed["attention_mask"]
            feed = {"input_ids": tokens[-1][:, None], "attention_mask": np.ones((batch, mask.shape[1] + 1), np.int64)}
            positions = np.full((batch, 1), mask.shape[1], np.int64)
        end = time.perf_counter()
        return first - start, end - first, np.stack(tokens, 1).tolist()

    return generate


def _genai_row(path: str, threads: int) -> Generate:
    """An onnxruntime-genai folder through og.Generator (greedy, token ids in, no tokenizer)."""
    import onnxruntime_genai as og

    config = og.Config(path)
    options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    model = og.Model(config)

    def generate(prompt: np.ndarray, new_tokens: int):
        batch, length = prompt.shape
        params = og.GeneratorParams(model)
        total = length + new_tokens
        params.set_search_options(do_sample=False, max_length=total, min_length=total, batch_size=batch)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(prompt.astype(np.int32))
        generator.generate_next_token()
        generator.get_next_tokens()
        first = time.perf_counter()
        while not generator.is_done():
            generator.generate_next_token()
        end = time.perf_counter()
        return first - start, end - first, [list(map(int, generator.get_sequence(i)[length:])) for i in range(batch)]

    return generate


ROWS: dict[str, Callable[[str, int], Generate]] = {"torch": _torch_row, "onnx": _onnx_row, "genai": _genai_row}
IMPORTS = {"torch": "transformers", "onnx": "onnxruntime", "genai": "onnxruntime_genai"}


def _reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(row: dict) -> None:
    __import__(IMPORTS[row["kind"]])
    after_import = memory_mb("VmRSS")
    generate = ROWS[row["kind"]](row["path"], int(row["threads"]))
    _reply({"rss_after_import_mb": after_import, "rss_after_load_mb": memory_mb("VmRSS")})
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            _reply({"peak_rss_mb": memory_mb("VmHWM")})
            return
        cpu = time.process_time()
        ttft, decode, tokens = generate(np.array(command["prompt"], dtype=np.int64), int(command["new_tokens"]))
        _reply({"ttft_s": ttft, "decode_s": decode, "tokens": tokens, "cpu_s": time.process_time() - cpu})


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(json.loads(sys.argv[1]))
