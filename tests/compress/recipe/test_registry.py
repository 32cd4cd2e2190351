"""The pass table: lookup, duplicates, and a guard that every pass is tested and shipped."""

from pathlib import Path

import pytest
import yaml

from compress.core.config import PassConfig
from compress.core.errors import RecipeError
from compress.recipe.registry import get_pass, list_passes, register_pass

ROOT = Path(__file__).resolve().parents[3]


def test_duplicate_registration_raises():
    class Dummy(PassConfig):
        pass

    with pytest.raises(ValueError, match="registered twice"):
        register_pass("magnitude_prune", Dummy)(lambda model, config, ctx: model)


def test_unknown_pass_error_lists_known():
    with pytest.raises(RecipeError, match="known passes: .*magnitude_prune"):
        get_pass("no_such_pass")


@pytest.mark.parametrize("name", list_passes())
def test_every_pass_has_its_test_module(name):
    assert (ROOT / "tests" / "compress" / "passes" / f"test_{name}.py").is_file()


def test_every_pass_appears_in_a_shipped_recipe():
    used = set()
    for path in (ROOT / "compress" / "recipes").glob("*.yaml"):
        used |= {entry["pass"] for entry in yaml.safe_load(path.read_text()).get("passes", [])}
    assert set(list_passes()) <= used
