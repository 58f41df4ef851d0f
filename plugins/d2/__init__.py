"""Detectron2 adapters: config keys, backbones and meta-architectures, registered on import.

Import this package before ``detectron2.layers`` when Detectron2 was installed without its
C++ extension (see ``plugins.d2._compat``).

Registered on import: the backbone ``build_efficientnet_bifpn_backbone``, the
meta-architectures ``EfficientDet``, ``RetinaNetPlus`` and ``CornerNet``, the datasets
``shapes_train`` / ``shapes_val``.
"""

from . import _compat  # noqa: F401  (must come first: provides detectron2._C when missing)

# isort: split
from . import config, cornernet, datasets, efficientdet, ema, retinanet  # noqa: F401  (registration)
from ._compat import HAS_D2_C
from .config import add_plugins_config

__all__ = ["HAS_D2_C", "add_plugins_config"]
