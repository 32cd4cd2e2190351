"""Property-based: any recipe document yields either a valid Recipe or a RecipeError, never a crash."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress.core.errors import RecipeError
from compress.recipe.registry import get_pass, list_passes
from compress.recipe.schema import Recipe, parse_recipe

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
PASS_NAMES = list_passes()
PASS_KEYS = sorted({key for name in PASS_NAMES for key in get_pass(name).config_cls.model_fields} | {"junk"})
PASS_ENTRY = st.builds(
    lambda name, params: {"pass": name, **params},
    st.sampled_from([*PASS_NAMES, "prune_magnitude"]) | SCALARS,
    st.dictionaries(st.sampled_from(PASS_KEYS), VALUES, max_size=4),
)
SECTION_KEYS = {
    "export": ["enabled", "opset", "dynamic_batch", "baseline", "output_name", "parity", "junk"],
    "report": ["batch_sizes", "warmup", "iterations", "max_seconds", "threads", "junk"],
    "model": ["factory", "checkpoint", "kwargs", "trust_checkpoint", "junk"],
    "task": ["metric", "junk"],
}
SECTIONS = {
    key: st.dictionaries(st.sampled_from(keys), VALUES, max_size=3) | VALUES for key, keys in SECTION_KEYS.items()
}
DOCUMENTS = (
    st.fixed_dictionaries(
        {},
        optional={
            "name": st.text(max_size=12) | VALUES,
            "seed": VALUES,
            "passes": st.lists(PASS_ENTRY, max_size=3) | VALUES,
            "junk": VALUES,
            **SECTIONS,
        },
    )
    | VALUES
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS)
def test_any_document_is_a_recipe_or_a_recipe_error(doc):
    try:
        recipe = parse_recipe(doc)
    except RecipeError as exc:
        assert exc.problems and all(isinstance(line, str) and line for line in exc.problems)
    else:
        assert isinstance(recipe, Recipe)
        assert parse_recipe(recipe.to_dict()).sha256() == recipe.sha256()  # a valid recipe round-trips
