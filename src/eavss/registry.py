"""One registry type for every named, pluggable choice: scores, capture sites, evaluation tasks,
calibration sets, QA sources, model aliases, HSAV/HSS definitions, commands.

An entry is a name, an object and its metadata (``help`` always; ``direction``, ``needs`` and
the like where the kind has them). The CLI's help text and the config validation read the
metadata, so the documentation of a choice lives where the choice is defined. One duplicate
policy everywhere: registering a name twice is a programming error (``ValueError``), never a
silent replacement. Looking up an unknown name is a user error (:class:`EavssError`) that lists
the valid names.

Example::

    SCORES = Registry("score")

    @SCORES.register("avss", help="var_norm / sparsity_norm", direction="higher = more important")
    def _avss(stats, options): ...

    SCORES["avss"]            # the function
    SCORES.entry("avss").meta # {"help": ..., "direction": ...}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Iterator, TypeVar

from eavss.errors import EavssError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered choice: ``name``, the registered ``obj`` and its metadata (``help`` ...)."""

    name: str
    obj: T
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def help(self) -> str:
        """The entry's one-line help text ("" when none was given)."""
        return str(self.meta.get("help", ""))


class Registry(Generic[T]):
    """An ordered name -> object map with metadata and one duplicate policy.

    Args:
        kind: what the entries are, for messages ("score", "capture site", ...).
        key: the config key or flag that selects an entry, for messages (optional).
    """

    def __init__(self, kind: str, key: str | None = None):
        self.kind = kind
        self.key = key
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T | None = None, **meta: Any) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator that registers
        the decorated object. ``meta`` is stored with it (``help=...``, ``direction=...``).

        Raises:
            ValueError: ``name`` is already registered (a programming error, not a user error).
        """
        if obj is None:
            def deco(o: T) -> T:
                self.register(name, o, **meta)
                return o
            return deco
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if "help" not in meta:
            doc = (getattr(obj, "__doc__", None) or "").strip()
            meta["help"] = doc.splitlines()[0] if doc and not isinstance(obj, (str, int, float)) else ""
        self._entries[name] = Entry(name, obj, dict(meta))
        return obj

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and plugins that register temporarily); no-op if absent."""
        self._entries.pop(name, None)

    def entry(self, name: str) -> Entry[T]:
        """The :class:`Entry` of ``name``.

        Raises:
            EavssError: unknown name; the message lists the registered names.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            where = f"{self.key}=" if self.key else f"{self.kind} "
            raise EavssError(f"{where}{name!r} is not valid; choose one of {self.names()}") from None

    def __getitem__(self, name: str) -> T:
        return self.entry(name).obj

    def get(self, name: str, default: Any = None) -> Any:
        """The object of ``name``, or ``default`` when it is not registered."""
        e = self._entries.get(name)
        return e.obj if e is not None else default

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def entries(self) -> list[Entry[T]]:
        """Registered entries, in registration order."""
        return list(self._entries.values())

    def items(self) -> Iterator[tuple[str, T]]:
        """``(name, obj)`` pairs, in registration order."""
        return ((n, e.obj) for n, e in self._entries.items())

    def describe(self, sep: str = "; ") -> str:
        """``name (help)`` for every entry, for help texts."""
        return sep.join(f"{e.name} ({e.help})" if e.help else e.name for e in self._entries.values())


def choices(*pairs: tuple[str, str], kind: str, key: str | None = None) -> Registry[str]:
    """A registry of plain option names with their help: ``choices(("sum", "x / sum"), kind=...)``.

    For options that select a behaviour by name inside one function (normalisations, poolings),
    so help and validation read the same list.
    """
    reg: Registry[str] = Registry(kind, key)
    for name, help_text in pairs:
        reg.register(name, name, help=help_text)
    return reg


def lookup(spec: str) -> Any:
    """Resolve ``"package.module:ATTRIBUTE"`` to the object (used for lazy references).

    Raises:
        ValueError: malformed spec.
    """
    import importlib

    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise ValueError(f"bad lazy reference {spec!r}; expected 'package.module:ATTRIBUTE'")
    obj: Any = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj

