"""What plugins register, as the engine holds it: an ``Entry`` per registered thing, a
``Registry`` per kind, and a ``Component``: an entry as a run names it, with its settings."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ganflow.errors import GanflowError, PluginError, UsageError, last_line
from ganflow.kinds import Kind
from ganflow.settings import Setting


@dataclass(frozen=True)
class Entry:
    """One registered thing: its kind and name, the object, the plugin that registered it."""

    kind: str
    name: str
    obj: Any
    plugin: str
    description: str = ""
    argument: str | None = None  # datasets, architectures: the placeholder after "name:"
    argument_optional: bool = False
    settings: dict[str, Setting] = field(default_factory=dict)

    @property
    def usage(self) -> str:
        """How the name is written: ``folder:PATH``, ``mlp[:SIZES]``, ``wgan[:SETTINGS]``."""
        if self.settings:
            return f"{self.name}[:SETTINGS]"
        if not self.argument:
            return self.name
        return f"{self.name}[:{self.argument}]" if self.argument_optional else f"{self.name}:{self.argument}"

    def call(self, doing: str, function: Callable, *args, **kwargs):
        """``function(*args, **kwargs)``: a failure in the plugin's code becomes a PluginError
        that names the plugin, this entry and what it was doing, with the error's last line.
        A ``GanflowError`` the plugin raised on purpose passes as it is."""
        try:
            return function(*args, **kwargs)
        except GanflowError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {self.plugin}: {self.kind} {self.name!r} failed {doing}: "
                f"{type(exc).__name__}: {last_line(exc)}".rstrip(": ")
                + " (ganflow --debug shows the traceback)") from exc

    def problem(self, exc: Exception) -> PluginError:
        """``exc`` (about this entry's object) as an error naming the plugin and the entry."""
        return PluginError(f"plugin {self.plugin}: {self.kind} {self.name!r}: {exc}")


@dataclass(frozen=True)
class Component:
    """A registered thing as a run names it: ``--loss wgan:gp=5`` (its settings), ``--dataset
    folder:PATH`` (its argument), ``--regularizer r1:every=16`` (``engine``: the settings the
    engine gives every one of its kind)."""

    entry: Entry
    values: dict[str, Any] = field(default_factory=dict)
    argument: str | None = None
    engine: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def plugin(self) -> str:
        return self.entry.plugin

    def build(self, *args):
        """The object a run uses: the registered factory called with ``args`` and the
        settings, or the registered object itself when it takes neither."""
        if not args and not self.entry.settings:
            return self.entry.obj
        return self.entry.call("to build", self.entry.obj, *args, **self.values)

    def params(self, prefix: str) -> dict[str, Any]:
        """Each setting that has a value as an MLflow param: ``{prefix}.{key}``."""
        return {f"{prefix}.{key}": value for key, value in {**self.values, **self.engine}.items()
                if value is not None}


class UnknownName(UsageError):
    """A name no loaded plugin registered (``kind``, ``name``)."""

    def __init__(self, message: str, kind: str, name: str):
        super().__init__(message)
        self.kind, self.name = kind, name


class Registry:
    """Named things of one kind; refuses duplicates and answers unknown names helpfully."""

    def __init__(self, kind: Kind):
        self.kind = kind.name
        self.spec = kind
        self._entries: dict[str, Entry] = {}
        self._gone: dict[str, str] = {}  # name -> why it was taken out

    def add(self, entry: Entry) -> None:
        if not isinstance(entry.name, str) or not entry.name or ":" in entry.name:
            raise PluginError(
                f"plugin {entry.plugin} registered a {self.kind} named {entry.name!r}: "
                "a name must be a non-empty string without ':'"
            )
        if entry.name in self._entries:
            first = self._entries[entry.name].plugin
            raise PluginError(
                f"{self.kind} {entry.name!r} is registered by two plugins, {first} and "
                f"{entry.plugin}: uninstall one of them or rename its {self.kind}"
            )
        self.spec.check(entry)
        self._entries[entry.name] = entry

    def remove(self, name: str, why: str) -> None:
        """Take ``name`` out; asked for, it is refused saying ``why``."""
        self._entries.pop(name, None)
        self._gone[name] = why

    def get(self, name: str) -> Entry:
        if name in self._gone:
            raise UsageError(f"{self.kind} {name!r} is switched off: {self._gone[name]}")
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(self._unknown(name), self.kind, name) from None

    def _unknown(self, name: str) -> str:
        known = sorted(self._entries)
        message = f"unknown {self.kind} {name!r}; known: {', '.join(known) or '(none)'}"
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        return message

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def build_architecture(chosen: Component):
    """The architecture an ``--arch`` names: the registered object, or, when registered with
    an argument, the factory called with it (None when an optional one is left out); with
    settings, the factory called with them."""
    if chosen.entry.settings:
        return chosen.build()
    if not chosen.entry.argument:
        return chosen.entry.obj
    return chosen.entry.call(f"to build from {chosen.entry.name}:{chosen.argument or ''}",
                             chosen.entry.obj, chosen.argument)
