"""Base class of every pass configuration: frozen, validated, versioned data.

Pydantic gives us range checks with readable messages and strict keys
(``extra="forbid"``), which the recipe validator turns into suggestions.
"""

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A recipe section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=True)


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
