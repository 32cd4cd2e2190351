"""Every module in this package is a pass; importing the package registers them all.

Modules are discovered, not listed, so adding a pass touches no other file. The config
classes of every pass (and the sections nested in them) are exposed here by name, for the
typed API: ``from compress.passes import DistillConfig, StructuredPruneConfig``.
"""

import importlib
import pkgutil

from pydantic import BaseModel

__all__: list[str] = []
for _module in pkgutil.iter_modules(__path__):
    _loaded = importlib.import_module(f"{__name__}.{_module.name}")
    for _name, _value in vars(_loaded).items():
        # Config classes defined in that module (not ones it imports): DistillConfig, OnnxQuantSpec, ...
        if isinstance(_value, type) and issubclass(_value, BaseModel) and _value.__module__ == _loaded.__name__:
            globals()[_name] = _value
            __all__.append(_name)
