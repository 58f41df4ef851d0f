"""Detectron2 adapters: config keys, backbones and meta-architectures, registered on import.

Import this package before ``detectron2.layers`` when Detectron2 was installed without its
C++ extension (see ``plugins.d2._compat``).
"""

from . import _compat  # noqa: F401  (must come first: provides detectron2._C when missing)
from ._compat import HAS_D2_C

__all__ = ["HAS_D2_C"]
