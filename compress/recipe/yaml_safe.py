"""Reading a recipe file that may be hostile: bounded size, nesting and alias expansion, UTF-8 only,
no duplicate keys. Each refusal is one RecipeError line naming the file and the fix.

PyYAML alone expands an alias bomb of a few hundred bytes into gigabytes, recurses until Python's
stack gives out on deep nesting, and keeps the last of two duplicate keys without a word.
"""

from pathlib import Path
from typing import Any

import yaml

from compress.core.errors import RecipeError

MAX_BYTES = 1_000_000  # a recipe is a few hundred bytes; a megabyte is surely not one
MAX_DEPTH = 32
MAX_NODES = 100_000  # nodes after alias expansion


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key (a list): PyYAML's own error names it below
                continue
            if duplicate:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {mark.line + 1}); keep one of them", mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _measure(node: yaml.Node, depth: int, sizes: dict[int, int], path: Path) -> int:
    """Expanded node count below ``node`` (aliases count every time they are used)."""
    if depth > MAX_DEPTH:
        raise RecipeError(f"{path}: nested deeper than {MAX_DEPTH} levels; a recipe needs a few, flatten it")
    if id(node) in sizes:
        return sizes[id(node)]
    children = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    total = 1 + sum(_measure(child, depth + 1, sizes, path) for child in children)
    if total > MAX_NODES:
        raise RecipeError(
            f"{path}: expands to more than {MAX_NODES} values (YAML aliases/anchors that multiply); "
            "write the values out instead of aliasing them"
        )
    sizes[id(node)] = total
    return total


_OPEN = (
    yaml.FlowSequenceStartToken,
    yaml.FlowMappingStartToken,
    yaml.BlockSequenceStartToken,
    yaml.BlockMappingStartToken,
)
_CLOSE = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)


def _check_depth(text: str, path: Path) -> None:
    """Refuse deep nesting from the token stream (PyYAML's scanner loops; its composer recurses)."""
    depth = 0
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, _OPEN):
            depth += 1
            if depth > MAX_DEPTH:
                raise RecipeError(f"{path}: nested deeper than {MAX_DEPTH} levels; a recipe needs a few, flatten it")
        elif isinstance(token, _CLOSE):
            depth -= 1


def read_yaml(path: Path) -> Any:
    """The document in ``path``, or RecipeError with one line saying what is wrong and how to fix it."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise RecipeError(f"{path}: {size} bytes, over the {MAX_BYTES}-byte limit of a recipe; is this the recipe?")
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"{path}: cannot be read ({exc.strerror or exc}); check the path and permissions") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RecipeError(
            f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r}); save the recipe as UTF-8"
        ) from None
    if "\0" in text:
        raise RecipeError(f"{path}: holds NUL characters, so it is not a text recipe; save the recipe as UTF-8")
    loader = None
    try:
        _check_depth(text, path)
        loader = _StrictLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node, 0, {}, path)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise RecipeError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)}); fix the syntax there") from None
    except RecursionError:  # the parser itself recurses on nesting before we can count it
        raise RecipeError(f"{path}: nested deeper than {MAX_DEPTH} levels; a recipe needs a few, flatten it") from None
    finally:
        if loader is not None:
            loader.dispose()
