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

from relaycomp.errors import RelaycompError

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
    """A registered pass: ``factory(target, **options)`` builds the ``tvm.transform.Pass``.

    ``options`` come from the pipeline's caller (``run_stages(..., options={name: {...}})``);
    a factory whose first parameter is named ``target`` may take further parameters for them.

    ``stage`` is where the pass runs when added to a pipeline by name (``position`` "start" or
    "end" of that stage); ``kinds`` are the target kinds ("llvm", "cuda") it applies to.
    """

    name: str
    stage: str
    factory: Callable
    kinds: tuple[str, ...] = ("llvm", "cuda")
    description: str = ""
    position: str = "end"
    reports: bool = False  # the factory takes ``report``: a dict the runner hands it to fill in


PASSES: Registry[PassInfo] = Registry("pass")
POSITIONS = ("start", "end")


def register_pass(name: str, stage: str, kinds: tuple[str, ...] = ("llvm", "cuda"),
                  description: str = "", position: str = "end") -> Callable:
    """Register a pass by name, to run at the ``position`` ("start"/"end") of ``stage``.

    The decorated object may be a ready ``tvm.transform.Pass``, a factory
    ``(target) -> tvm.transform.Pass``, or a plain function ``(mod: IRModule) -> IRModule``
    (recognised by a first parameter named ``mod``/``module`` or annotated ``IRModule``)::

        @register_pass("drop_debug_names", stage="simplify")
        def drop_debug_names(mod: tvm.IRModule) -> tvm.IRModule: ...
    """
    if position not in POSITIONS:
        raise RegistryError(f"pass '{name}': position must be one of {POSITIONS}")

    def decorate(obj):
        doc = description or (obj.__doc__ or "").strip().split("\n")[0]
        PASSES.add(name, PassInfo(name, stage, as_pass_factory(name, obj), tuple(kinds), doc,
                                  position, _takes_report(obj)))
        return obj

    return decorate


def _takes_report(obj) -> bool:
    import inspect

    try:
        return "report" in inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False


def as_pass_factory(name: str, obj) -> Callable:
    """Normalise a Pass, a pass factory or a plain module function into a factory."""
    import inspect

    import tvm  # local: keeps the registry importable without loading TVM

    if isinstance(obj, tvm.transform.Pass):
        return lambda target: obj
    if not callable(obj):
        raise RegistryError(f"pass '{name}' is a {type(obj).__name__}, not a pass or function")
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        params = []
    required = [p for p in params if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    first = params[0] if params else None
    takes_module = first is not None and (
        first.name in ("mod", "module") or "IRModule" in str(first.annotation))
    if len(required) > 1 and (takes_module or first.name != "target"):
        raise RegistryError(
            f"pass '{name}' takes {len(required)} arguments",
            hint="a pass is a function (mod: IRModule) -> IRModule or a factory "
                 "(target, **options) -> Pass")
    if takes_module:
        def run(mod, ctx):
            result = obj(mod)
            if not isinstance(result, tvm.IRModule):
                raise TypeError(f"returned {type(result).__name__}, not an IRModule")
            return result

        module_pass = tvm.transform.module_pass(run, opt_level=0, name=name)
        return lambda target: module_pass
    return obj
