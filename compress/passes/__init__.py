"""Every module in this package is a pass; importing the package registers them all.

Modules are discovered, not listed, so adding a pass touches no other file.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
