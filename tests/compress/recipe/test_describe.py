"""``modelpress passes --verbose`` is generated whole from the configs' pydantic field descriptions (issue 32,
item 5): every key of every pass and nested section has its own complete text and a type as a recipe
writes it."""

import re

import pytest

import compress.passes  # noqa: F401  (registers the passes)
from compress.core.config import args_docs
from compress.recipe.describe import describe_pass, nested_models
from compress.recipe.registry import get_pass, list_passes

SECTIONS = sorted(
    {c for name in list_passes() for c in [get_pass(name).config_cls, *nested_models(get_pass(name).config_cls)]},
    key=lambda c: c.__name__,
)
# A text cut mid-sentence ends on a word that needs more ("A norm or a") or on a separator.
DANGLING = re.compile(r"(\b(a|an|the|or|and|of|to|by|with|in|on|for|from|that|which|when|where)|[,;:(/-])$")


@pytest.mark.parametrize("section", SECTIONS, ids=lambda c: c.__name__)
def test_every_key_has_its_own_complete_description(section):
    texts = {name: field.description for name, field in section.model_fields.items()}
    assert all(texts.values()), [name for name, text in texts.items() if not text]
    for name, text in texts.items():
        assert not DANGLING.search(text.strip()), (name, text)
        opened, closed = sum(map(text.count, "([")), sum(map(text.count, ")]"))  # [0, 1) is an interval
        assert opened == closed and text.count("``") % 2 == 0, (name, text)
    shared = {text for text in texts.values() if list(texts.values()).count(text) > 1}
    assert not shared, shared  # no text stands for several keys


def test_the_verbose_listing_prints_each_description_whole_and_plain_types():
    lines = [line for name in list_passes() for line in describe_pass(name)]
    keys = [line for line in lines if re.match(r"^ +[a-z_0-9]+: ", line) and " = " in line]
    assert keys and not any(re.search(r"Annotated|\w+\(\w+=|<class|typing\.|compress\.", line) for line in keys)
    text = "\n".join(lines)
    # Entries that run over several docstring lines arrive whole, with the text of their continuation.
    assert "a norm or a block (e.g. a patch merging) named here keeps the widths of the groups" in text
    assert "per_channel: bool = True\n        int8 weights with one scale per output channel" in text
    assert "reduce_range: bool | 'auto' = 'auto'\n        int8 weights on 7 bits; ``auto``: on x86 CPUs" in text
    assert "layers: list[int] | None = None" in text and "strategy: 'every_other' | 'uniform'" in text


def test_an_args_entry_runs_over_its_continuation_lines_and_stops_at_the_next_key():
    doc = """One section.

    Args:
    first: starts here,
        and ends here.
    second: alone.

    Notes after a blank line are no key's text: third: not a key.
    """
    assert args_docs(doc) == {"first": "starts here, and ends here.", "second": "alone."}
