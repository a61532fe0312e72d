"""A registry of plug-in modules: every module in a package registers what it defines at import.

Families (``trainers/families/``) and tasks (``trainers/tasks/``) each keep one; adding one is adding
a module to the folder, found without a list to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

from common.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, package: str, what: str):
        self.package, self.what, self.items = package, what, {}
        self._found = False

    def register(self, name: str, item: T) -> T:
        self.items[name] = item
        return item

    def discover(self) -> dict[str, T]:
        if not self._found:
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self.package}.{module.name}")
            self._found = True
        return self.items

    def names(self) -> list[str]:
        return sorted(self.discover())

    def get(self, name: str) -> T:
        if name not in self.discover():
            raise ConfigError(f"`{self.what}` is {name!r}; known {self.what.replace('family', 'families')}"
                              f"{'' if self.what == 'family' else 's'}: {', '.join(self.names())}")
        return self.items[name]
