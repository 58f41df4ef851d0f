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
* ``HOOKS``: ``PluginsPublishHook``, the model-zoo file at the end of training
  (:mod:`plugins.mm.publish`); ``PluginsDivergenceGuardHook`` and ``PluginsExactResumeHook``
  (:mod:`plugins.mm.hooks`).
"""

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
