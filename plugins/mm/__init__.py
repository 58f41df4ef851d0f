"""MMDetection 3.x adapters: registrations in mmdet's registries (names start with ``Plugins``).

Importing this package registers every component (configs do it with
``custom_imports = dict(imports=["plugins.mm"], allow_failed_imports=False)``):

* ``MODELS``: ``PluginsEfficientDet``, ``PluginsEfficientNet``, ``PluginsBiFPN``,
  ``PluginsEfficientDetHead``, ``PluginsRetinaHead``, the losses ``PluginsFocalLoss``,
  ``PluginsAlphaBalancedBCELoss``, ``PluginsGaussianFocalLoss``, ``PluginsHuberLoss``,
  ``PluginsSmoothL1Loss``, and the CornerNet components of :mod:`plugins.mm.cornernet`.
* ``TASK_UTILS``: ``PluginsEfficientDetAnchorGenerator``, ``PluginsEfficientDetBoxCoder``.
* ``DATASETS``: ``PluginsShapesDataset``, ``PluginsCocoDataset``; ``METRICS``:
  ``PluginsShapesMetric``, ``PluginsCocoMetric`` (checked data, bad boxes dropped:
  :mod:`plugins.mm.data_check`).
* ``TRANSFORMS``: ``PluginsCheckImage``, inference inputs (:mod:`plugins.mm.image_input`).
* Test-time NMS: ``test_cfg.nms.type="plugins_soft_nms"`` (:mod:`plugins.mm.soft_nms`).
* Checkpoints: mmengine's readers become weights-only with an allow-list, and weights that do
  not fit the model are an error (:mod:`plugins.mm.checkpoint`).
* ``HOOKS``: ``PluginsPublishHook``, the model-zoo file at the end of training
  (:mod:`plugins.mm.publish`); ``PluginsDivergenceGuardHook`` and ``PluginsExactResumeHook``
  (:mod:`plugins.mm.hooks`).
"""

# first: safe (weights-only) checkpoint reading and the fit check for every mmengine load
from plugins.mm import checkpoint  # noqa: F401  # isort: skip
from plugins.mm import (  # noqa: F401
    cornernet,
    data_check,
    datasets,
    efficientdet,
    hooks,
    image_input,
    losses,
    publish,
    soft_nms,
)

__all__ = [
    "checkpoint",
    "cornernet",
    "data_check",
    "datasets",
    "efficientdet",
    "hooks",
    "image_input",
    "losses",
    "publish",
    "soft_nms",
]
