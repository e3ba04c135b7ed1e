"""Registries: one per kind of component (methods, synthetic modes, generators, datasets).

A component registers itself with a class decorator where it is defined, so the
component is the only place its name is written::

    @register_method("byol")
    class BYOL(MomentumMethod): ...

A user's own module registers components the same way; importing it before the
config is read makes them usable in recipes: a plain ``import`` in Python, or for the
CLI the environment variable ``SYNTHPOS_PLUGINS=my_module,other_module`` (modules on
``sys.path``), which every registry imports on its first look-up. Built-in components are imported the first time a registry is
asked for a name, so reading a registry never depends on import order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import os
import pkgutil
from importlib import import_module
from typing import Any, Generic, TypeVar

from synthpos.errors import SynthposError

T = TypeVar("T")

#: comma-separated modules that register components of their own (imported on a registry's first look-up)
PLUGINS_ENV = "SYNTHPOS_PLUGINS"

__all__ = ["DATASETS", "GENERATORS", "METHODS", "MODES", "Registry"]


class Registry(Generic[T]):
    """Name -> component, filled by :meth:`register`.

    Args:
        kind: what the components are, for messages ("method").
        key: the config key that names one ("pretrain.method").
        package: the package whose modules register the built-in components; every module in it
            is imported on the first look-up (so no list of names or modules is kept anywhere).
    """

    def __init__(self, kind: str, key: str, package: str | None = None) -> None:
        self.kind, self.key = kind, key
        self._package = package
        self._entries: dict[str, T] = {}
        self._default: str | None = None
        self._loaded = False
        #: built-in modules that could not be imported for want of a third-party package -> why
        self.not_loaded: dict[str, str] = {}

    def register(self, name: str, default: bool = False) -> Callable[[T], T]:
        """Class decorator: make the component available as ``<key>: name``; sets ``cls.name``.

        ``default=True`` makes it the one a config that names none gets (one per registry, declared
        where the component is, so the config schema writes no component's name).
        """

        def add(component: T) -> T:
            known = self._entries.get(name)
            if known is not None and known is not component and _qualname(known) != _qualname(component):
                raise ValueError(f"a {self.kind} named {name!r} is already registered ({_qualname(known)})")
            if default and self._default not in (None, name):
                raise ValueError(f"{self.key}: {name!r} and {self._default!r} both declare themselves the default "
                                 f"{self.kind}; drop default=True from one")
            if default:
                self._default = name
            self._entries[name] = component
            if isinstance(component, type):
                component.name = name  # type: ignore[attr-defined]
            return component

        return add

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register scratch components clean up with this)."""
        self._entries.pop(name, None)
        if self._default == name:
            self._default = None

    @property
    def default(self) -> str:
        """The name registered with ``default=True``: what a config gets that names none.

        Raises:
            SynthposError: no component declares itself the default.
        """
        self.load_builtins()
        if self._default is None:
            raise SynthposError(f"no {self.kind} is registered as the default; set {self.key} in the config")
        return self._default

    def moved_keys(self) -> dict[str, tuple[str, str]]:
        """Keys that moved into a component's section: old flat key -> (component, key in its section).

        Each component declares its own (``moved = {"num_steps": "num_steps"}`` on the class: the
        flat ``<section>.num_steps`` is now ``<section>.<name>.num_steps``), so no table of them
        is kept elsewhere.

        Raises:
            ValueError: two components claim the same old key.
        """
        out: dict[str, tuple[str, str]] = {}
        for name, component in self.items():
            for old, new in (getattr(component, "moved", None) or {}).items():
                if old in out and out[old][0] != name:
                    raise ValueError(f"{self.key.rsplit('.', 1)[0]}.{old} is claimed as a moved key by both "
                                     f"{out[old][0]} and {name}; drop it from one of their `moved` tables")
                out[old] = (name, new)
        return out

    def load_builtins(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
            try:
                import_module(module)
            except ModuleNotFoundError as err:
                if err.name != module:
                    raise
                raise SynthposError(f"{PLUGINS_ENV} names {module!r}, which cannot be imported; put it on "
                                    "PYTHONPATH or fix the name") from None
        if self._package is None:
            return
        package = import_module(self._package)
        for info in pkgutil.iter_modules(package.__path__):
            try:
                import_module(f"{self._package}.{info.name}")
            except ModuleNotFoundError as err:
                if (err.name or "").split(".")[0] == "synthpos":
                    raise
                # A component that needs an extra which is not installed is absent; the module's
                # message (unclip: "pip install 'synthpos[unclip]'") goes into the unknown-name error.
                self.not_loaded[f"{self._package}.{info.name}"] = str(err)

    def names(self) -> list[str]:
        self.load_builtins()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self.load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self) -> list[tuple[str, T]]:
        self.load_builtins()
        return list(self._entries.items())

    def get(self, name: str) -> T:
        """The component called ``name``.

        Raises:
            SynthposError: no component of that name is registered (one line, with the known names).
        """
        self.load_builtins()
        if name not in self._entries:
            raise SynthposError(f"{self.key}={self.unknown(name)}")
        return self._entries[name]

    def unknown(self, name: str) -> str:
        """The one-line reason ``name`` is not here: the known names, and the built-in modules that
        could not be imported (with what to install)."""
        self.load_builtins()
        known = ", ".join(self._entries) or "none"
        absent = "".join(f"; {module} is not loaded ({why})" for module, why in self.not_loaded.items())
        return f"{name!r} is not a known {self.kind}; known: {known}{absent}"

    def __getitem__(self, name: str) -> T:
        return self.get(name)


def _qualname(component: object) -> str:
    return f"{getattr(component, '__module__', '?')}.{getattr(component, '__qualname__', component)}"


#: joint-embedding methods (``pretrain.method``); classes derived from ``synthpos.methods.base.SSLMethod``
METHODS: Registry[Any] = Registry("method", "pretrain.method", "synthpos.methods")
#: synthetic modes (``pretrain.synthetic.mode``); classes derived from ``synthpos.modes.base.SyntheticMode``
MODES: Registry[Any] = Registry("synthetic mode", "pretrain.synthetic.mode", "synthpos.modes")
#: generators (``generate.kind``); classes derived from ``synthpos.generators.registry.CandidateGenerator``
GENERATORS: Registry[Any] = Registry("generator", "generate.kind", "synthpos.generators")
#: datasets (``data.name``); classes derived from ``synthpos.data.datasets.DatasetSource``
DATASETS: Registry[Any] = Registry("dataset", "data.name", "synthpos.data")
