"""A causal LM through a recipe, as a user writes it: the model and its tokenizer from a local Hugging
Face folder, text data, perplexity as the task metric; exported without the cache and scored in ONNX
Runtime on the same tokens, with the teacher-forced top-1 agreement as parity. The artifact is the
decoder with its KV cache, measured as one forward pass from an empty past."""

import json

import pytest
import torch
import yaml

import compress
from compress.models.evaluate import perplexity, torch_predictor
from compress.models.hf import causal_lm
from compress.models.text import text_data
from export.onnx.runtime import make_session
from tests.tiny_decoders import og_greedy, tiny_decoder, word_level_tokenizer

EVAL = [" ".join(f"w{(7 * i + 3 * j) % 120 + 3}" for j in range(6 + i % 5)) for i in range(8)]  # padded batches
TRAIN = [" ".join(f"w{(5 * i + j) % 120 + 3}" for j in range(10)) for i in range(8)]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_decoder("llama").save_pretrained(folder)
    word_level_tokenizer().save_pretrained(folder)
    return folder


def test_a_folder_loads_as_a_causal_lm_with_its_tokenizer(model_folder):
    model = causal_lm(str(model_folder))
    data = text_data(EVAL, str(model_folder), batch_size=4)
    reference = tiny_decoder("llama")
    predict = torch_predictor(model)
    assert perplexity(predict, data.eval) == perplexity(torch_predictor(reference), data.eval)
    assert model.config.use_cache  # loaded as shipped: modelpress exports one pass without the cache


@pytest.mark.slow
def test_recipe_run_scores_perplexity_in_onnx_runtime(model_folder, tmp_path):
    recipe = {
        "name": "tiny-lm",
        "model": {"factory": "compress.models.hf:causal_lm", "kwargs": {"path": str(model_folder)}},
        "data": {
            "factory": "compress.models.text:text_data",
            "kwargs": {"eval": EVAL, "train": TRAIN, "tokenizer": str(model_folder), "batch_size": 4},
        },
        "task": {"metric": "perplexity"},
        "passes": [{"pass": "magnitude_prune", "sparsity": 0.3}],
        "export": {"check_providers": []},
        "report": {"batch_sizes": [1], "warmup": 1, "iterations": 3, "max_seconds": 0.5},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = compress.run_recipe(path, out_dir=tmp_path / "run")
    assert result.failures == []
    artifacts = {a["name"]: a for a in result.artifacts}
    for name, stage in (("baseline", "baseline"), ("compressed", "magnitude_prune")):
        assert artifacts[name]["kv_cache"] is True  # the artifact can generate
        session = make_session(tmp_path / "run" / artifacts[name]["path"])
        assert "past_key_values.1.value" in [i.name for i in session.get_inputs()]
        metric = artifacts[name]["metric"]
        assert metric["name"] == "perplexity" and metric["higher_is_better"] is False
        # the same tokens scored in ONNX Runtime as in torch, within fp32 rounding
        assert metric["value"] == pytest.approx(result.metrics[stage], rel=1e-4)
        assert artifacts[name]["parity"]["top1_agreement"] >= 0.99  # teacher-forced, token by token
        decoding = artifacts[name]["generation_parity"]  # prefill and 4 greedy steps against torch
        assert decoding["within_tolerance"] and decoding["tokens_agree"] and decoding["steps"] == 4
        assert artifacts[name]["genai_folder"] == f"artifacts/{name}.genai"
    assert result.metrics["magnitude_prune"] > result.metrics["baseline"] > 1.0  # pruning costs perplexity
    _agrees_with_the_baseline_as_torch_does(artifacts, result, model_folder)
    report = json.loads(result.report_path.read_text())
    # within the default budget of 0.01 perplexity only the baseline qualifies; the rise is named
    assert report["summary"]["recommended"]["name"] == "baseline"
    assert torch.isfinite(torch.tensor(report["stages"][1]["metric"]["value"]))
    _generates_like_torch(tmp_path / "run" / "artifacts" / "compressed.genai", result.model)


def _agrees_with_the_baseline_as_torch_does(artifacts, result, model_folder):
    """Each decoder artifact's teacher-forced top-1 against the baseline artifact, scored in ONNX Runtime
    on the eval rows, is what the two torch models give on the same tokens."""
    from export.decoder.perplexity import language_scores, torch_logits

    data = text_data(EVAL, str(model_folder), batch_size=4)
    batches = [(inputs["input_ids"], inputs["attention_mask"]) for inputs, *_ in data.eval]
    torch_models = {"baseline": tiny_decoder("llama"), "compressed": result.model}
    expected = language_scores({n: torch_logits(m) for n, m in torch_models.items()}, batches, "baseline")
    for name in torch_models:
        language = artifacts[name]["language"]
        assert language["reference"] == "baseline" and language["rows"] == len(EVAL)
        assert language["tokens"] == expected[name].tokens
        assert language["perplexity"] == pytest.approx(expected[name].perplexity, rel=1e-4)
        assert language["top1_agreement"] == pytest.approx(expected[name].top1_agreement, abs=1 / language["tokens"])
    assert artifacts["baseline"]["language"]["top1_agreement"] == 1.0
    assert artifacts["compressed"]["language"]["top1_agreement"] < 1.0  # 30% of the weights pruned
    assert "## Agreement with baseline" in result.report_path.with_suffix(".md").read_text()


def _generates_like_torch(folder, model, prompt=(1, 17, 33, 45, 9), new_tokens=8):
    """onnxruntime-genai runs the run's folder as is, and its greedy tokens are torch's."""
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    tokens = og_greedy(folder, prompt, new_tokens)
    ids = torch.tensor([prompt])
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens)
    assert tokens == expected[0].tolist()
