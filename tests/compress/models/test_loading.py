"""Checkpoints and factories named by a recipe."""

import pytest
import torch
from safetensors.torch import save_file

from compress.core.errors import InputError
from compress.core.factories import import_object
from compress.models.loading import load_data, load_model
from compress.recipe.schema import DataSpec, ModelSpec
from tests.tiny_models import mlp


def trained_state():
    model = mlp()
    with torch.no_grad():
        model.fc1.weight.mul_(2)
    return model.state_dict()


@pytest.mark.parametrize("form", ["safetensors", "state_dict", "wrapped"])
def test_checkpoint_weights_are_loaded(tmp_path, form):
    state = trained_state()
    if form == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "w.pt"
        torch.save({"state_dict": state} if form == "wrapped" else state, path)
    model = load_model(ModelSpec(factory="tests.tiny_models:mlp", checkpoint=str(path)))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    state = trained_state()
    state["extra.weight"] = state.pop("fc2.weight")
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(InputError, match=r"missing: fc2\.weight; unexpected: extra\.weight"):
        load_model(ModelSpec(factory="tests.tiny_models:mlp", checkpoint=str(path)))


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_model(ModelSpec(factory="tests.tiny_models:mlp", checkpoint=str(tmp_path / "nope.pt")))
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"\x00not a safetensors file")
    with pytest.raises(InputError, match="cannot be read"):
        load_model(ModelSpec(factory="tests.tiny_models:mlp", checkpoint=str(corrupt)))


def test_weights_file_without_factory_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(trained_state(), str(path))
    with pytest.raises(InputError, match="needs model.factory"):
        load_model(ModelSpec(checkpoint=str(path)))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.tiny_models", "not of the form package.module:function"),
        ("tests.no_such_module:f", "cannot import module 'tests.no_such_module'"),
        ("tests.tiny_models:nope", "has no attribute 'nope'"),
    ],
)
def test_bad_factory_paths(spec, message):
    with pytest.raises(InputError, match=message):
        import_object(spec, "model.factory")


def test_factory_next_to_the_recipe_is_found(tmp_path):
    (tmp_path / "my_factories.py").write_text(
        "from tests.tiny_models import vector_data\ndef data():\n    return {'eval': vector_data().eval}\n"
    )
    data = load_data(DataSpec(factory="my_factories:data"), search_dir=tmp_path)
    assert len(list(data.batches("eval"))) == 3


def test_a_factory_of_a_moved_module_still_loads_and_names_its_new_path(capsys):
    from compress.models.hf import stsb_data

    assert import_object("compress.hf:stsb_data", "data.factory") is stsb_data
    assert "moved to compress.models.hf:stsb_data" in " ".join(capsys.readouterr().err.split())
