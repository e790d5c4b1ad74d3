"""Packages whose public names import on first use.

``import satcompress`` (and so every ``satcompress`` command, ``--help`` included) would
otherwise import Lightning, timm, Brevitas and ONNX Runtime up front: seconds on a 2-core
CPU. Written by hand because the one library for this (``lazy_loader``) would rebind a
public name that is also a submodule's name (``satcompress.train`` the function and the
package) to the module once that submodule is imported; here the public name wins.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class _LazyPackage(types.ModuleType):
    """A package module whose names in ``_LAZY`` (name -> submodule) import on first use."""

    def __getattr__(self, name: str) -> Any:
        table = self.__dict__.get("_LAZY", {})
        if name not in table:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{self.__name__}.{table[name]}"), name)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # The import system binds each imported submodule on its parent; a public name of
        # the same spelling (a function, a class) keeps its meaning instead.
        if isinstance(value, types.ModuleType) and name in self.__dict__.get("_LAZY", {}):
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(self.__dict__) | set(self.__dict__.get("_LAZY", {})))


def lazy_package(name: str, table: dict[str, str]) -> list[str]:
    """Make package ``name`` import each of ``table``'s names from its submodule on first use.

    Args:
        name: The package's ``__name__``.
        table: Public name -> submodule (relative to the package) that defines it.

    Returns:
        The lazy names, sorted, to add to the package's ``__all__``.
    """
    module = sys.modules[name]
    module.__dict__["_LAZY"] = dict(table)
    for public in table:  # a submodule bound before this call does not shadow the name
        if isinstance(module.__dict__.get(public), types.ModuleType):
            del module.__dict__[public]
    module.__class__ = _LazyPackage
    return sorted(table)
