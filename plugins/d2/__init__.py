"""Detectron2 adapters: config keys, backbones and meta-architectures, registered on import.

Import this package before ``detectron2.layers`` when Detectron2 was installed without its
C++ extension (see ``plugins.d2._compat``).

Registered on import: the backbone ``build_efficientnet_bifpn_backbone``, the
meta-architectures ``EfficientDet``, ``RetinaNetPlus`` and ``CornerNet``, the datasets
``shapes_train`` / ``shapes_val``. Also on import: ``DetectionCheckpointer`` reads weights only
(``weights_only=True`` and an allow-list; ``.pkl`` through a restricted unpickler) and refuses
weights that do not fit the model (:mod:`plugins.d2.checkpoint`). ``MODEL.NMS.TYPE`` switches
Detectron2's own detectors to soft-NMS (:mod:`plugins.d2.soft_nms`); configs can inherit the
installed model zoo's files (``_BASE_: "/detectron2-model-zoo/..."``, :mod:`plugins.d2.model_zoo`).
"""

from . import _compat  # noqa: F401  (must come first: provides detectron2._C when missing)

# isort: split
# checkpoint: safe, checked DetectionCheckpointer loading; model_zoo: model-zoo _BASE_ paths;
# soft_nms: the MODEL.NMS switch; the others register components
from . import (  # noqa: F401
    checkpoint,
    config,
    cornernet,
    datasets,
    efficientdet,
    ema,
    model_zoo,
    retinanet,
    soft_nms,
)
from ._compat import HAS_D2_C
from .config import add_plugins_config

__all__ = ["HAS_D2_C", "add_plugins_config"]
