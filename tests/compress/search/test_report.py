"""The written recipe: how to reproduce it from another folder, and no consent it was not given."""

from compress.recipe.schema import load_recipe
from compress.search import driver
from compress.search.report import local_modules_dir

LOCAL = {"model": {"factory": "mymodel:build"}, "data": {"factory": "compress.demo.digits:load_data"}}


def test_modules_beside_the_recipe_are_named_for_a_recipe_written_elsewhere(tmp_path):
    (tmp_path / "mymodel.py").write_text("")
    out = tmp_path / "searches" / "x"
    assert local_modules_dir(load_recipe(LOCAL), out, tmp_path) == tmp_path
    assert local_modules_dir(load_recipe(LOCAL), tmp_path, tmp_path) is None  # written beside them
    installed = {**LOCAL, "model": {"factory": "compress.demo.digits:build_model"}}
    assert local_modules_dir(load_recipe(installed), out, tmp_path) is None


def test_trust_checkpoint_loads_the_model_but_is_not_written_into_the_recipe(tmp_path, monkeypatch):
    (tmp_path / "recipe.yaml").write_text("model: {factory: 'compress.demo.digits:build_model'}\n")
    seen = {}
    monkeypatch.setattr("compress.models.loading.load_model", lambda spec, where: seen.setdefault("model", spec))
    monkeypatch.setattr("compress.models.loading.load_data", lambda spec, where: None)
    monkeypatch.setattr(driver, "run_search", lambda model, recipe, data, **kw: seen.setdefault("recipe", recipe))
    driver.search_recipe(tmp_path / "recipe.yaml", trust_checkpoint=True)
    assert seen["model"].trust_checkpoint and not seen["recipe"].model.trust_checkpoint
