"""The onnxruntime-genai folder: its genai_config.json, and og.Generator's greedy tokens on a tiny
exported Llama equal to torch ``generate(do_sample=False)``."""

import json

import pytest
import torch

from export.decoder.genai_folder import genai_config, write_genai_folder
from export.decoder.kv_export import DecoderOnnx
from export.errors import ExportError
from tests.tiny_decoders import tiny_decoder, word_level_tokenizer


def test_genai_config_names_the_cache_and_the_tokens(tmp_path):
    model = tiny_decoder("qwen2")
    names = ("input_ids", "attention_mask", "position_ids")
    decoder = DecoderOnnx(
        path=tmp_path / "model.onnx", model_type="qwen2", num_layers=2, num_kv_heads=2, head_dim=8, vocab_size=128,
        input_names=names, output_names=("logits",), dtype="float32", opset=18,
    )  # fmt: skip
    config = genai_config(decoder, model.config, model.generation_config)

    section = config["model"]["decoder"]
    assert section["inputs"]["past_key_names"] == "past_key_values.%d.key"
    assert section["outputs"]["present_value_names"] == "present.%d.value"
    assert (section["num_attention_heads"], section["num_key_value_heads"], section["head_size"]) == (4, 2, 8)
    assert (section["num_hidden_layers"], section["hidden_size"]) == (2, 32)
    tokens = {key: config["model"][f"{key}_token_id"] for key in ("bos", "eos", "pad")}
    assert tokens == {"bos": 1, "eos": 2, "pad": 0}  # tiny_decoders.COMMON
    assert config["model"]["type"] == "qwen2"
    assert config["search"]["past_present_share_buffer"] is False
    assert config["search"]["do_sample"] is False


def test_families_without_a_genai_type_are_refused(tmp_path):
    with pytest.raises(ExportError, match="no decoder type for 'bloom'"):
        write_genai_folder(tiny_decoder("bloom"), tmp_path / "bloom")


def test_og_generator_matches_torch_greedy(tmp_path):
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    model = tiny_decoder("llama")
    folder = write_genai_folder(model, tmp_path / "llama", word_level_tokenizer())
    assert {"model.onnx", "genai_config.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["num_key_value_heads"] == 2

    prompt, new_tokens = [1, 17, 33, 45, 9], 8
    params = og.GeneratorParams(og_model := og.Model(str(folder)))
    params.set_search_options(max_length=len(prompt) + new_tokens, do_sample=False)
    generator = og.Generator(og_model, params)
    generator.append_tokens(prompt)  # ids directly: onnxruntime-genai's tokenizer does not read WordLevel models
    while not generator.is_done():
        generator.generate_next_token()

    expected = model.generate(
        torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long), do_sample=False,
        max_new_tokens=new_tokens,
    )  # fmt: skip
    assert [int(t) for t in generator.get_sequence(0)] == expected[0].tolist()
