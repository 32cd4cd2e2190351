"""Turns pydantic validation errors into one plain line per problem.

Each line names the key (``export.parity.atol``), what is wrong, and the fix:
the closest valid key for a misspelling, the allowed range for a value out of range.
"""

import difflib
import typing

import annotated_types
from pydantic import BaseModel, ValidationError

_BOUNDS = (
    (annotated_types.Ge, "[", "ge"),
    (annotated_types.Gt, "(", "gt"),
    (annotated_types.Le, "]", "le"),
    (annotated_types.Lt, ")", "lt"),
)
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def format_location(loc: tuple) -> str:
    """``("passes", 0, "sparsity")`` -> ``passes[0].sparsity``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _submodel(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _model_at(model_cls: type[BaseModel], path: tuple) -> type[BaseModel] | None:
    current = model_cls
    for part in path:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        current = _submodel(field.annotation) if field else None
        if current is None:
            return None
    return current


def _range_text(model_cls: type[BaseModel] | None, key) -> str | None:
    field = model_cls.model_fields.get(key) if model_cls else None
    if field is None:
        return None
    low = high = None
    for item in field.metadata:
        for kind, bracket, attr in _BOUNDS:
            if isinstance(item, kind):
                if attr in ("ge", "gt"):
                    low = (bracket, getattr(item, attr))
                else:
                    high = (bracket, getattr(item, attr))
    if low is None and high is None:
        return None
    left = f"{low[0]}{low[1]}" if low else "(-inf"
    right = f"{high[1]}{high[0]}" if high else "inf)"
    return f"{left}, {right}"


def _short(value, limit: int = 80) -> str:
    """The offending value as the user wrote it, cut short: a hostile one may be megabytes long."""
    if isinstance(value, (list, tuple, dict, str)) and len(value) > 1000:
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_errors(exc: ValidationError, model_cls: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per error of ``exc``, raised while validating ``model_cls``."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = format_location(loc)
        where = f"{prefix}.{where}" if prefix and where else (prefix or where or "recipe")
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _model_at(model_cls, loc[:-1])
            valid = sorted(parent.model_fields) if parent else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            lines.append(f"{where}: unknown key {loc[-1]!r}; {hint}valid keys: {', '.join(valid)}")
        elif kind == "missing":
            lines.append(f"{where}: required key is missing; add it to the recipe")
        elif kind in _RANGE_ERRORS:
            allowed = _range_text(_model_at(model_cls, loc[:-1]), loc[-1])
            rule = f"must be in {allowed}" if allowed else err["msg"].lower()
            lines.append(f"{where}: {_short(err['input'])} is out of range; {rule}")
        else:
            lines.append(f"{where}: {err['msg']}; got {_short(err.get('input'))}")
    return lines
