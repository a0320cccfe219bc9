"""A small name → object registry: decorator registration, duplicates refused, lookups that list.

Used for passes, target presets, calibrators and importance criteria, instead of if-chains::

    SCHEDULES = Registry("schedule")

    @SCHEDULES.register("generic")
    def generic(...): ...

    SCHEDULES.get("generic")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import RelaycompError

T = TypeVar("T")


class RegistryError(RelaycompError):
    """A registry lookup failed or a name was registered twice."""


class Registry(Generic[T]):
    """Maps names to objects of one kind (``what`` names the kind in error messages)."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        """Register ``item`` under ``name``; a name already taken is refused."""
        if name in self._items:
            raise RegistryError(f"{self.what} '{name}' is already registered")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda item: self.add(name, item)

    def get(self, name: str) -> T:
        """Look ``name`` up; an unknown name raises an error listing the known ones."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise RegistryError(f"unknown {self.what} '{name}'", hint=f"known: {known}") from None

    def remove(self, name: str) -> None:
        """Forget ``name`` (used by tests and by plugins that unload)."""
        self._items.pop(name, None)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @contextmanager
    def scoped(self) -> Iterator[Registry[T]]:
        """Context manager for tests: registrations made inside are undone on exit."""
        saved = dict(self._items)
        try:
            yield self
        finally:
            self._items = saved


@dataclass(frozen=True)
class PassInfo:
    """A registered pass: ``factory(target)`` builds the ``tvm.transform.Pass`` for a target.

    ``stage`` is where the pass runs unless a pipeline places it explicitly; ``kinds`` are the
    target kinds ("llvm", "cuda") it applies to.
    """

    name: str
    stage: str
    factory: Callable
    kinds: tuple[str, ...] = ("llvm", "cuda")
    description: str = ""


PASSES: Registry[PassInfo] = Registry("pass")


def register_pass(name: str, stage: str, kinds: tuple[str, ...] = ("llvm", "cuda"),
                  description: str = "") -> Callable:
    """Register a pass factory ``(target) -> tvm.transform.Pass`` (or a ready Pass) by name::

        @register_pass("schedule_cpu_loops", stage="schedule", kinds=("llvm",))
        def schedule_cpu_loops(target): ...
    """

    def decorate(obj):
        factory = (lambda target: obj) if _is_tvm_pass(obj) else obj
        doc = description or (obj.__doc__ or "").strip().split("\n")[0]
        PASSES.add(name, PassInfo(name, stage, factory, tuple(kinds), doc))
        return obj

    return decorate


def _is_tvm_pass(obj) -> bool:
    import tvm  # local: keeps the registry importable without loading TVM

    return isinstance(obj, tvm.transform.Pass)
