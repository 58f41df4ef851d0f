"""Detectron2 adapters: config keys, backbones and meta-architectures, registered on import.

Import this package before ``detectron2.layers`` when Detectron2 was installed without its
C++ extension (see ``plugins.d2._compat``).

Registered on import: the backbone ``build_efficientnet_bifpn_backbone``, the
meta-architectures ``EfficientDet``, ``RetinaNetPlus`` and ``CornerNet``, the datasets
``shapes_train`` / ``shapes_val``. ``MODEL.NMS.TYPE`` switches Detectron2's own detectors to
soft-NMS (:mod:`plugins.d2.soft_nms`); configs can inherit the installed model zoo's files
(``_BASE_: "/detectron2-model-zoo/..."``, :mod:`plugins.d2.model_zoo`).
"""

from . import _compat  # noqa: F401  (must come first: provides detectron2._C when missing)

# isort: split
from . import config, cornernet, datasets, efficientdet, ema, retinanet  # noqa: F401  (registration)
from . import model_zoo, soft_nms  # noqa: F401  (model-zoo _BASE_ paths; MODEL.NMS switch)
from ._compat import HAS_D2_C
from .config import add_plugins_config

__all__ = ["HAS_D2_C", "add_plugins_config"]
