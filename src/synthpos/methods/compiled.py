"""``pretrain.compile``: torch.compile of a method's backbone and heads, in place.

``nn.Module.compile`` compiles a module's forward where it stands: the parameters, the
state_dict keys, checkpoints and the exported ``backbone.pt`` stay exactly those of the
module uncompiled. The compile is paid on the first step (and again when a shape
changes, e.g. the last batch of an epoch); torch keeps compiled kernels in its on-disk
cache (``TORCHINDUCTOR_CACHE_DIR``, default under the system's temporary folder), so a
later process with the same model compiles faster.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

#: keyword arguments of every ``nn.Module.compile`` call (tests swap in a cheap backend)
COMPILE_OPTIONS: dict[str, Any] = {}


def compile_modules(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """``module.compile(**COMPILE_OPTIONS)`` for each module; returns them (compiled in place)."""
    compiled = []
    for module in modules:
        module.compile(**COMPILE_OPTIONS)
        compiled.append(module)
    return compiled


def trainable_children(method: nn.Module) -> list[nn.Module]:
    """The method's direct submodules that hold parameters: backbone, projector, predictor, momentum copies.

    The augmentation (no parameters; its random draws and Python control flow would only
    break the graph) and parameter-free buffers such as memory queues stay eager.
    """
    return [child for child in method.children() if any(True for _ in child.parameters())]


def compile_method(method: nn.Module) -> list[nn.Module]:
    """Compile ``method``'s backbone and heads in place (see :func:`trainable_children`); returns them."""
    return compile_modules(trainable_children(method))
