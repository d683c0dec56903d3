"""Package attributes imported on first use (PEP 562), so that importing a package is cheap."""

import importlib


def lazy_exports(package: str, table: dict[str, str]):
    """A module ``__getattr__`` that imports ``name`` from ``table[name]`` (a module path) when first asked."""

    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(table[name]), name)

    return __getattr__
