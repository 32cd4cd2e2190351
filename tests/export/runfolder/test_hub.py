"""A run with ``export.hf_folder: true`` on a MiniLM-shaped sentence encoder (issue 31): the folder loads
with ``AutoModel.from_pretrained`` and ``SentenceTransformer(folder)`` in a Python that cannot import
modelpress, giving the compressed model's outputs within 1e-5; its ONNX files sit where
sentence-transformers documents them and run in ONNX Runtime with the folder's tokenizer; its model card
holds report.json's figures, also after ``modelpress report`` rewrote them. One run for the file."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

import compress
from compress.cli import main
from tests.compress.search.test_search_depth import mean_embedding
from tests.tiny_models import SENTENCES, sentence_data, tiny_minilm, tiny_tokenizer

RECIPE = {
    "name": "hub",
    "passes": [
        {
            "pass": "structured_prune",
            "ratio": 0.0,
            "head_ratio": 0.5,  # 4 -> 2 heads: BERT's config cannot say it, the folder pads them with zeros
            "layer_ratios": {"re:.*intermediate\\.dense": 0.5},  # 64 -> 32 in every layer: intermediate_size
            "round_to": 1,
        },
        {"pass": "quantize", "onnx": [{"scheme": "int8_dynamic", "name": "int8", "exporter": "torchscript"}]},
    ],
    # TorchScript: a few seconds of export where dynamo takes tens on a loaded 2-core machine
    "export": {"hf_folder": True, "baseline": False, "exporter": "torchscript"},
    "report": {"batch_sizes": [1], "warmup": 1, "iterations": 3, "max_seconds": 1.0},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    tokenizer = tiny_tokenizer()
    data = sentence_data(tokenizer)
    result = compress.run(tiny_minilm(len(tokenizer)), RECIPE, data, out_dir=root / "run", evaluator=mean_embedding)
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    with torch.no_grad():
        tokens = result.model.encoder(**inputs).last_hidden_state.numpy()
        embeddings = result.model(**inputs).numpy()
    return root, result, tokens, embeddings


# The venv may hold modelpress as an editable install, which -I does not hide: refuse its packages outright.
BLOCK_MODELPRESS = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("compress", "export"):
            raise ImportError(f"{name}: modelpress is not importable here")
sys.meta_path.insert(0, Blocked())
try:
    import compress
except ImportError:
    pass
else:
    raise SystemExit("compress importable")
"""


# Both loaders in one Python (importing transformers and sentence-transformers is most of its time).
RELOAD = """
import sys, numpy, torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer
folder, sentences = sys.argv[1], sys.argv[2].split("|")
tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
encoded = tokenizer(sentences, padding=True, return_tensors="pt")
with torch.no_grad():
    tokens = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).last_hidden_state
embeddings = SentenceTransformer(folder, device="cpu").encode(sentences, convert_to_numpy=True)
numpy.savez(sys.argv[3], tokens=tokens.numpy(), embeddings=embeddings)
"""


@pytest.fixture(scope="module")
def reloaded(run):
    """What AutoModel and SentenceTransformer give on the folder, in a Python that cannot import modelpress,
    started from a folder outside the repository (-I: no PYTHONPATH, no cwd on the path)."""
    root = run[0]
    folder = root / "run" / "artifacts" / "compressed.hf"
    arguments = [str(folder), "|".join(SENTENCES), str(root / "out.npz")]
    done = subprocess.run(
        [sys.executable, "-I", "-c", BLOCK_MODELPRESS + RELOAD, *arguments],
        cwd=root,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(root / "out.npz")


def test_automodel_loads_the_folder_without_modelpress(run, reloaded):
    root, result, tokens, _ = run
    record = next(a for a in result.artifacts if a["name"] == "compressed")
    folder = root / "run" / record["hf_folder"]
    assert record["hf_folder_kind"] == "sentence-transformers" and record["hf_folder_parity_max_abs"] <= 1e-5
    assert any("zero weights" in note for note in record["hf_folder_notes"])  # the head cut, said once
    assert reloaded["tokens"].shape == tokens.shape and np.abs(reloaded["tokens"] - tokens).max() <= 1e-5
    config = yaml.safe_load((folder / "config.json").read_text())
    assert config["intermediate_size"] == 32 and config["num_attention_heads"] == 4  # FFN cut, heads padded


def test_sentence_transformers_loads_the_folder_without_modelpress(run, reloaded):
    embeddings = run[3]
    assert reloaded["embeddings"].shape == embeddings.shape
    assert np.abs(reloaded["embeddings"] - embeddings).max() <= 1e-5


def test_the_onnx_files_run_with_the_folders_tokenizer(run):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from export.hub.sentence_folder import cpu_name

    root, result, _, embeddings = run
    folder = root / "run" / "artifacts" / "compressed.hf"
    names = next(a for a in result.artifacts if a["name"] == "compressed")["hf_folder_files"]
    assert names == ["onnx/model.onnx", f"onnx/model_qint8_{cpu_name()}.onnx"]  # sentence-transformers' names
    encoded = AutoTokenizer.from_pretrained(str(folder))(SENTENCES, padding=True, return_tensors="np")
    feed = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    mask = feed["attention_mask"][..., None].astype(np.float32)
    for name, atol in zip(names, (1e-4, None)):
        session = ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
        pooled = (session.run(None, feed)[0] * mask).sum(1) / mask.sum(1)  # the folder's Pooling: mean
        if atol:
            assert np.abs(pooled - embeddings).max() <= atol
        else:  # int8: close, not equal
            cosine = (pooled * embeddings).sum(1) / np.linalg.norm(pooled, axis=1) / np.linalg.norm(embeddings, axis=1)
            assert cosine.min() > 0.99


def _card_figures(folder) -> list[tuple[str, float]]:
    text = (folder / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    metrics = front["model-index"][0]["results"][0]["metrics"]
    return sorted((m["type"], m["value"]) for m in metrics)


def _report_figures(report: dict) -> list[tuple[str, float]]:
    stage = report["stages"][-1]["metric"]
    figures = [(stage["name"], stage["value"])]
    for artifact in report["artifacts"]:
        if artifact["status"] == "passed":
            if artifact.get("metric"):  # absent when `modelpress report` cannot score a custom metric
                figures.append((artifact["metric"]["name"], artifact["metric"]["value"]))
            figures.append(("size_bytes", artifact["size_bytes"]))
            figures += [("latency_p50_ms", row["p50_ms"]) for row in artifact["latency"] if not row.get("stale")]
    return sorted(figures)


def test_the_model_card_holds_report_json_figures_also_after_modelpress_report(run, capsys):
    root, _, _, _ = run
    out, folder = root / "run", root / "run" / "artifacts" / "compressed.hf"
    report = yaml.safe_load((out / "report.json").read_text())
    assert _card_figures(folder) == _report_figures(report)
    assert len(_card_figures(folder)) == 1 + 4 + 3  # torch metric; compressed (metric, size, torch, ORT); int8
    assert main(["report", str(out), "-q"]) == 0
    again = yaml.safe_load((out / "report.json").read_text())
    assert _card_figures(folder) == _report_figures(again)  # rewritten with the report's new timings
    assert again["created"] in (folder / "README.md").read_text()
