"""Recipe validation: every problem named, with the fix, before anything runs."""

import pytest

from compress.core.errors import RecipeError
from compress.passes.magnitude_prune import MagnitudePruneConfig
from compress.recipe.schema import Recipe, load_recipe, parse_recipe


def problems(doc) -> list[str]:
    with pytest.raises(RecipeError) as info:
        parse_recipe(doc)
    return info.value.problems


def test_misspelled_pass_key_suggests_the_closest():
    (line,) = problems({"passes": [{"pass": "magnitude_prune", "sparsty": 0.5}]})
    assert line.startswith("passes[0] (magnitude_prune).sparsty: unknown key 'sparsty'")
    assert "did you mean 'sparsity'?" in line


def test_misspelled_section_suggests_the_closest():
    (line,) = problems({"exprot": {"opset": 18}})
    assert "unknown key 'exprot'; did you mean 'export'?" in line


def test_nested_misspelling_names_the_full_path():
    (line,) = problems({"export": {"parity": {"atoll": 1e-3}}})
    assert line.startswith("export.parity.atoll: unknown key 'atoll'; did you mean 'atol'?")


def test_unknown_pass_lists_known_passes():
    (line,) = problems({"passes": [{"pass": "magnitude_prun"}]})
    assert "unknown pass 'magnitude_prun'; did you mean 'magnitude_prune'?" in line
    assert "known passes: " in line and "magnitude_prune" in line


def test_out_of_range_value_states_the_range():
    (line,) = problems({"passes": [{"pass": "magnitude_prune", "sparsity": 1.5}]})
    assert line == "passes[0] (magnitude_prune).sparsity: 1.5 is out of range; must be in [0.0, 1.0)"
    (line,) = problems({"export": {"opset": 9}})
    assert line == "export.opset: 9 is out of range; must be in [14, 23]"


def test_every_problem_is_reported_at_once():
    lines = problems({"seed": -1, "passes": [{"pass": "nope"}, {"pass": "magnitude_prune", "scope": "all"}]})
    assert len(lines) == 3
    assert any(line.startswith("seed:") for line in lines)
    assert any(
        line.startswith("passes[1] (magnitude_prune).scope:") and "'layer' or 'global'" in line for line in lines
    )


def test_pass_entry_must_be_a_mapping_with_a_pass_name():
    (line,) = problems({"passes": ["magnitude_prune"]})
    assert line.startswith("passes[0]: expected a mapping like {pass: magnitude_prune")


def test_yaml_file_dict_and_typed_configs_give_the_same_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\npasses:\n  - pass: magnitude_prune\n    sparsity: 0.25\n    scope: global\n")
    from_file = load_recipe(path)
    from_dict = load_recipe({"name": "r", "passes": [{"pass": "magnitude_prune", "sparsity": 0.25, "scope": "global"}]})
    typed = Recipe(name="r", passes=[MagnitudePruneConfig(sparsity=0.25, scope="global")])
    assert from_file.to_dict() == from_dict.to_dict() == typed.to_dict()
    assert from_file.sha256() == typed.sha256()


def test_recipe_round_trips_through_its_dict():
    recipe = load_recipe({"name": "x", "passes": [{"pass": "magnitude_prune", "sparsity": 0.3}]})
    assert parse_recipe(recipe.to_dict()) == recipe


def test_invalid_yaml_names_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("passes:\n  - pass: magnitude_prune\n   sparsity: [0.5\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}:3:")
    assert "invalid YAML" in str(info.value)


def test_missing_file_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "absent.yaml")


def test_relative_checkpoint_resolves_against_the_recipe_folder(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {factory: 'a.b:c', checkpoint: weights.safetensors}\n")
    assert load_recipe(path).model.checkpoint == str(tmp_path / "weights.safetensors")


def test_configs_are_frozen():
    config = MagnitudePruneConfig()
    with pytest.raises(Exception, match="frozen"):
        config.sparsity = 0.9
