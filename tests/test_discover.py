"""Discoverability: --version, passes --verbose / NAME, the recipe JSON Schema, bench suites, config classes."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

import compress.passes
from compress.cli import main
from compress.recipe.registry import get_pass, list_passes

RECIPES = sorted((Path(__file__).resolve().parents[1] / "compress" / "recipes").glob("*.yaml"))


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == "modelpress 0.1.0"


def test_passes_verbose_prints_every_key_with_type_default_range_and_doc(capsys):
    assert main(["passes", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "  alpha: float = 0.7, >= 0.0, <= 1.0\n      share of the soft (teacher) loss" in out
    assert "  sparsity: float = 0.5, >= 0.0, < 1.0\n      share of weights set to zero" in out
    for name in list_passes():
        for key in get_pass(name).config_cls.model_fields:
            assert f"  {key}: " in out, (name, key)
    # Nested sections are described too: quantize's onnx entries.
    assert "  OnnxQuantSpec keys:" in out and "    accuracy_level: 0 | 1 | 2 | 3 | 4 | 'auto' = 4" in out


def test_passes_name_and_unknown_name(capsys):
    assert main(["passes", "structured_prune"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("structured_prune (StructuredPruneConfig, compress.passes.StructuredPruneConfig):")
    assert "distill" not in out.split("\n")[0]
    assert main(["passes", "distil"]) == 2
    assert "did you mean 'distill'?" in capsys.readouterr().err


def test_schema_validates_every_shipped_recipe_and_rejects_a_misspelled_key(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    validator = jsonschema.Draft202012Validator(schema)
    assert len(RECIPES) >= 6
    for path in RECIPES:
        assert list(validator.iter_errors(yaml.safe_load(path.read_text()))) == [], path.name
    bad = yaml.safe_load(RECIPES[0].read_text())
    bad["passes"] = [{"pass": "magnitude_prune", "sparsty": 0.5}]
    assert not validator.is_valid(bad)
    bad["passes"] = [{"pass": "magnitude_prune", "sparsity": 1.5}]
    assert not validator.is_valid(bad)
    bad["passes"] = [{"pass": "prune_magnitude", "sparsity": 0.5}]
    assert not validator.is_valid(bad)
    bad["exprot"] = {}
    bad["passes"] = []
    assert not validator.is_valid(bad)


def test_bench_help_lists_the_suites(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "digits-cnn" in out and "minilm-sts" in out


def test_config_classes_are_exposed_by_name():
    for name in list_passes():
        cls = get_pass(name).config_cls
        assert getattr(compress.passes, cls.__name__) is cls
    assert {"DistillConfig", "StructuredPruneConfig", "QuantizeConfig", "OnnxQuantSpec"} <= set(compress.passes.__all__)
