"""Joint-embedding methods on a thin Lightning base, and stage 3 (pretraining).

Every method is one short module; :func:`method_class` finds it by its config name.
"""

from __future__ import annotations

from importlib import import_module

from synthpos.methods.base import SSLMethod

# config name -> "module:Class" (imported when used, so one method's imports never slow the others)
METHODS: dict[str, str] = {
    "simclr": "synthpos.methods.simclr:SimCLR",
    "mocov2plus": "synthpos.methods.mocov2plus:MoCoV2Plus",
    "mocov3": "synthpos.methods.mocov3:MoCoV3",
    "byol": "synthpos.methods.byol:BYOL",
    "simsiam": "synthpos.methods.simsiam:SimSiam",
    "barlow_twins": "synthpos.methods.barlow_twins:BarlowTwins",
    "vicreg": "synthpos.methods.vicreg:VICReg",
    "nnclr": "synthpos.methods.nnclr:NNCLR",
    "dcl": "synthpos.methods.dcl:DCL",
    "dclw": "synthpos.methods.dcl:DCLW",
    "all4one": "synthpos.methods.all4one:All4One",
    "supcon": "synthpos.methods.supcon:SupCon",
}


def method_class(name: str) -> type[SSLMethod]:
    """The class of the method called ``name`` in configs (``pretrain.method``)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(import_module(module), cls)


__all__ = ["METHODS", "SSLMethod", "method_class"]
