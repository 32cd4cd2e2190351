"""Base class of every pass configuration: frozen, validated, versioned data.

Pydantic gives us range checks with readable messages and strict keys
(``extra="forbid"``), which the recipe validator turns into suggestions.
"""

import inspect
import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

_ENTRY = re.compile(r"^([a-z_][a-z0-9_]*): (.+)$")


def args_docs(doc: str | None) -> dict[str, str]:
    """The ``Args:`` section of a docstring, ``key: text`` per key, each text whole: an entry runs on over
    its indented continuation lines and ends at the next key or a blank line."""
    docs: dict[str, str] = {}
    key, in_args = None, False
    for line in inspect.cleandoc(doc or "").splitlines():
        if re.match(r"^\s*Args\b.*:$", line):
            in_args, key = True, None
        elif not line.strip():
            in_args = key is None and in_args  # a blank line ends the section, but not right after ``Args:``
            key = None
        elif in_args and (entry := _ENTRY.match(line.strip())) and not line.startswith(("  ", "\t")):
            key = entry.group(1)
            docs[key] = entry.group(2).strip()
        elif key is not None:
            docs[key] += " " + line.strip()
    return docs


class StrictModel(BaseModel):
    """A recipe section: unknown keys are errors, values are immutable.

    A key without ``Field(description=...)`` takes its text from the class's ``Args:`` docstring, so that
    ``modelpress passes --verbose`` and the JSON Schema read one description per key from pydantic.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        docs: dict[str, str] = {}
        for klass in reversed(cls.__mro__):  # a key a subclass redefines keeps its base's text unless it has one
            docs.update(args_docs(klass.__doc__) if issubclass(klass, StrictModel) else {})
        missing = [name for name, field in cls.model_fields.items() if not field.description and name in docs]
        for name in missing:
            cls.model_fields[name].description = docs[name]
        if missing:
            cls.model_rebuild(force=True)  # the JSON Schema carries the descriptions too


class PassConfig(StrictModel):
    """Parameters of one pass. Subclasses add fields with ``Field(ge=..., le=...)``."""

    pass_name: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        """The recipe form of this config: ``{"pass": name, **fields}``."""
        return {"pass": self.pass_name, **self.model_dump(mode="json")}

    def check_recipe(self, export_opset: int) -> list[str]:
        """Problems this pass's settings cause with the rest of the recipe (none by default)."""
        return []

    def onnx_variants(self) -> list:
        """Extra (e.g. quantized) ONNX artifacts this pass asks the exporter for (none by default)."""
        return []
