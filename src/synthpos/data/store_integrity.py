"""The old path of :mod:`synthpos.data.store.integrity`, which it *is*.

Not a copy of its names: code that patches a function here (``file_digest`` in tests that
count what is hashed) must reach the module whose functions call it, so this module puts
that one in its place in ``sys.modules`` (Python binds ``synthpos.data.store_integrity`` to it).
"""

import sys

from synthpos.data.store import integrity

sys.modules[__name__] = integrity
