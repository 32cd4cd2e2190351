"""Recipe documentation generated from the pydantic models: per-key tables and the JSON Schema.

``modelpress passes --verbose`` and ``modelpress schema`` print these, so the docs cannot
drift from the validator: both read the same pydantic ``Field`` metadata (its descriptions filled from
each config's ``Args:`` docstring, ``compress.core.config``).
"""

from enum import Enum
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

# Pydantic's constraint attribute -> the symbol printed in a range.
_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _constrained_members(annotation: Any) -> list:
    """``Annotated`` members of a union (``Literal["auto"] | Annotated[int, Field(ge=1)]``)."""
    if get_origin(annotation) is not Union:
        return []
    return [arg for arg in get_args(annotation) if get_origin(arg) is Annotated]


def _type_name(annotation: Any) -> str:
    """A key's type as a recipe writes it: ``int | None``, ``list[int]``, ``'a' | 'b'`` (an enum or a
    literal by its values); constraints go to the range column, never into the type."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " | ".join(repr(arg) for arg in args)
    if origin in (Union, UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " | ".join(repr(member.value) for member in annotation)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(arg) for arg in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _range(field) -> str:
    bounds = []
    extras = [extra for arg in _constrained_members(field.annotation) for extra in get_args(arg)[1:]]
    members = [item for extra in extras for item in getattr(extra, "metadata", [extra])]  # a Field() holds its own
    for item in [*field.metadata, *members]:
        for attr, symbol in _BOUNDS.items():
            value = getattr(item, attr, None)
            if value is not None:
                bounds.append(f"{symbol} {value}")
    return ", ".join(bounds)


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "{...}"
    return repr(getattr(value, "value", value))


def describe_keys(cls: type[BaseModel]) -> list[dict[str, str]]:
    """One row per key of ``cls``: name, type, default, range and its one-line doc."""
    rows = []
    for name, field in cls.model_fields.items():
        rows.append(
            {
                "key": name,
                "type": _type_name(field.annotation),
                "default": _default(field),
                "range": _range(field),
                "doc": field.description or "",
            }
        )
    return rows


def format_keys(cls: type[BaseModel], indent: str = "  ") -> list[str]:
    lines = []
    for row in describe_keys(cls):
        extra = f", {row['range']}" if row["range"] else ""
        lines.append(f"{indent}{row['key']}: {row['type']} = {row['default']}{extra}")
        if row["doc"]:
            lines.append(f"{indent}    {row['doc']}")
    return lines


def nested_models(cls: type[BaseModel]) -> list[type[BaseModel]]:
    """Config sections used inside ``cls`` (e.g. quantize's ``onnx`` entries), depth first, once each."""
    found: list[type[BaseModel]] = []

    def walk(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in found:
                found.append(annotation)
                for field in annotation.model_fields.values():
                    walk(field.annotation)
            return
        for arg in get_args(annotation):
            walk(arg)

    for field in cls.model_fields.values():
        walk(field.annotation)
    return found


def describe_pass(name: str) -> list[str]:
    """Every key of pass ``name`` and of the sections nested in it, one key and one doc line each."""
    from compress.recipe.registry import get_pass

    cls = get_pass(name).config_cls
    lines = [f"{name} ({cls.__name__}, compress.passes.{cls.__name__}):", *format_keys(cls)]
    for section in nested_models(cls):
        lines += [f"  {section.__name__} keys:", *format_keys(section, indent="    ")]
    return lines


def recipe_schema() -> dict[str, Any]:
    """JSON Schema of a whole recipe; ``passes`` items are each pass's config, chosen by ``pass``."""
    from compress.recipe.registry import get_pass, list_passes
    from compress.recipe.schema import Recipe

    schema = Recipe.model_json_schema()
    defs = schema.setdefault("$defs", {})
    refs, mapping = [], {}
    for name in list_passes():
        cls = get_pass(name).config_cls
        body = cls.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(body.pop("$defs", {}))
        body["properties"] = {"pass": {"const": name, "description": "the pass to run"}, **body.get("properties", {})}
        body["required"] = ["pass", *body.get("required", [])]
        body["additionalProperties"] = False
        defs[cls.__name__] = body
        refs.append({"$ref": f"#/$defs/{cls.__name__}"})
        mapping[name] = f"#/$defs/{cls.__name__}"
    defs.pop("PassConfig", None)
    schema["properties"]["passes"] = {
        "type": "array",
        "description": "passes run in order; each entry's keys are those of its pass",
        "items": {"oneOf": refs, "discriminator": {"propertyName": "pass", "mapping": mapping}},
    }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "modelpress recipe"
    return schema
