"""Joint-embedding methods on a thin Lightning base, and stage 3 (pretraining).

Every method is one short module that registers its class (``@register_method("name")``);
:func:`method_class` finds it by its config name in :data:`synthpos.registry.METHODS`.
"""

from __future__ import annotations

from synthpos.methods.base import SSLMethod, register_method
from synthpos.registry import METHODS


def method_class(name: str) -> type[SSLMethod]:
    """The class of the method called ``name`` in configs (``pretrain.method``).

    Raises:
        SynthposError: no method of that name is registered.
    """
    return METHODS.get(name)


__all__ = ["METHODS", "SSLMethod", "method_class", "register_method"]
