"""User passes: load them from a file, a module or an installed plugin package.

A pass spec on the command line is ``SOURCE:NAME[@PLACE]`` or ``NAME[@PLACE]``:

- ``SOURCE`` is a ``.py`` file (``./my_passes.py``) or an importable module (``mypkg.passes``);
  importing it runs its ``@register_pass`` decorators. ``NAME`` is a registered pass, or an
  attribute of the source (a ``tvm.transform.Pass`` or a function ``(mod) -> IRModule``),
  registered on the spot.
- ``PLACE`` is ``STAGE`` (end of that stage), ``before:STAGE`` (its start) or ``after:STAGE``
  (its end); without it the pass runs where it was registered (``simplify`` by default).

Installed packages expose passes through the entry-point group ``relaycomp.passes``: each entry
point names a module (which registers its passes) or a pass object (registered under the entry
point's name). They are loaded only when asked for: a ``--pass NAME`` that no built-in pass
answers loads the entry point called ``NAME`` (then, if still unknown, the others), and
``relaycomp passes`` loads them all to list them. A plugin that fails to load is reported by
name and breaks nothing else (:func:`load_entry_points` returns it among the broken ones).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

from relaycomp.compiler.pipeline import Placement, placement_of
from relaycomp.errors import RelaycompError, last_line
from relaycomp.registry import PASSES, RegistryError, register_pass

ENTRY_POINT_GROUP = "relaycomp.passes"
DEFAULT_STAGE = "simplify"
_PLACE_WORDS = {"before": "start", "after": "end"}


class PluginError(RelaycompError):
    """A user pass could not be found, imported or registered."""


def parse_place(text: str) -> tuple[str, str]:
    """``fuse`` / ``before:fuse`` / ``after:fuse`` → (stage, position)."""
    word, sep, stage = text.partition(":")
    if not sep:
        return text, "end"
    if word not in _PLACE_WORDS or not stage:
        raise PluginError(f"bad pass placement '@{text}'",
                          hint="use @STAGE, @before:STAGE or @after:STAGE")
    return stage, _PLACE_WORDS[word]


def load_pass_spec(spec: str) -> Placement:
    """Load and register the pass named by ``spec``; returns where it should run."""
    target, _, place = spec.partition("@")
    source, sep, name = target.rpartition(":")
    if not sep:
        source, name = "", target
    if not name:
        raise PluginError(f"bad pass spec '{spec}'", hint="use SOURCE:NAME[@STAGE], e.g. "
                          "./my_passes.py:drop_dropout@simplify")
    module = _import_source(source) if source else None
    if name not in PASSES and module is None:
        broken = _load_plugins_for(name)
        if name not in PASSES:
            note = f"; plugins that failed to load: {'; '.join(broken)}" if broken else ""
            raise PluginError(f"unknown pass '{name}'",
                              hint=f"registered: {', '.join(PASSES.names())}{note}")
    if name not in PASSES:
        _register_attribute(module, name, source)
    if not place:
        return placement_of(name)
    stage, position = parse_place(place)
    return Placement(name, stage, position)


def _import_source(source: str):
    """Import a ``.py`` file or a module by name; failures name the source."""
    module_name = source
    try:
        if not source.endswith(".py"):
            return importlib.import_module(source)
        path = Path(source)
        if not path.is_file():
            raise PluginError(f"pass file {source} does not exist")
        module_name = f"relaycomp_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        if module_name not in sys.modules:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        return sys.modules[module_name]
    except (PluginError, RegistryError):
        raise
    except Exception as err:  # the user's module failed while importing
        if source.endswith(".py"):
            sys.modules.pop(module_name, None)
        raise PluginError(f"cannot import pass source '{source}': {last_line(err)}") from err


def _register_attribute(module, name: str, source: str) -> None:
    obj = getattr(module, name, None)
    if obj is None:
        found = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise PluginError(f"'{source}' has no pass named '{name}'",
                          hint=f"it defines: {', '.join(found) or 'nothing callable'}")
    try:
        register_pass(name, DEFAULT_STAGE)(obj)
    except RegistryError as err:
        raise PluginError(f"'{source}:{name}' is not a usable pass: {err}", hint=err.hint) from err


def _load_plugins_for(name: str) -> list[str]:
    """Load the entry point called ``name``, else all of them; the broken ones, described."""
    entries = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    named = [e for e in entries if e.name == name]
    _, broken = load_entry_points(named or entries)
    return broken


def load_entry_points(entries=None) -> tuple[list[str], list[str]]:
    """Import the installed ``relaycomp.passes`` plugins (``entries``, default: all of them).

    Returns the names loaded and, for each plugin that failed to load or register, one line
    naming it and why: a broken plugin is reported, it does not stop the others.
    """
    if entries is None:
        entries = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    loaded, broken = [], []
    for entry in entries:
        try:
            obj = entry.load()
            if not isinstance(obj, type(sys)) and entry.name not in PASSES:
                register_pass(entry.name, DEFAULT_STAGE)(obj)
        except Exception as err:  # noqa: BLE001 - any failure of a plugin is the plugin's
            broken.append(f"plugin '{entry.name}' ({entry.value}): {last_line(err)}")
            continue
        loaded.append(entry.name)
    return loaded, broken
