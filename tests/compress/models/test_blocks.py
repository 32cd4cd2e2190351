"""Structure-level model facts: nn.TransformerEncoder's nested-tensor fast path is turned off, so a
classifier built on it with a padding mask prunes, exports and matches its own ONNX file."""

import torch

import compress
from compress.models.blocks import without_nested_tensor_fast_path
from compress.models.data import TaskData
from tests.zoo.torch_models import EncoderClassifier


def batch(seed: int):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (8, 10), generator=generator)
    mask = torch.ones(8, 10, dtype=torch.long)
    mask[:, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}, torch.randint(0, 3, (8,), generator=generator)


def test_the_fast_path_is_turned_off_and_real_tokens_are_unchanged():
    torch.manual_seed(0)
    model = EncoderClassifier().eval()
    inputs, _ = batch(0)
    with torch.no_grad():
        fast = model.encoder(model.embed(inputs["input_ids"]), src_key_padding_mask=inputs["attention_mask"] == 0)
        assert without_nested_tensor_fast_path(model) == ["encoder"] and without_nested_tensor_fast_path(model) == []
        plain = model.encoder(model.embed(inputs["input_ids"]), src_key_padding_mask=inputs["attention_mask"] == 0)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(plain[real], fast[real], rtol=0, atol=1e-5)
    assert float(fast[~real].abs().max()) == 0.0 and float(plain[~real].abs().max()) > 0.1  # the zeros it made


def test_a_padded_transformer_encoder_classifier_prunes_exports_and_passes_parity(tmp_path):
    torch.manual_seed(0)
    data = TaskData(eval=[batch(0), batch(1)], train=[batch(i) for i in range(2, 5)], validation=[batch(9)])
    recipe = {"passes": [{"pass": "structured_prune", "ratio": 0.3}], "export": {"check_providers": []}}
    result = compress.run(EncoderClassifier().eval(), recipe, data, out_dir=tmp_path / "run", report=False)
    statuses = {a["name"]: (a["status"], a.get("error")) for a in result.artifacts}
    assert statuses == {"baseline": ("passed", None), "compressed": ("passed", None)}
    record = result.stages[-1].record
    assert record["params_after"] < 0.7 * record["params_before"]
