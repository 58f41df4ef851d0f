"""Soft-NMS from :mod:`plugins.core.soft_nms` wherever MMDetection takes an ``nms`` config.

One line in any test config switches a detector to the core soft-NMS::

    model.test_cfg.rcnn.nms = dict(type="plugins_soft_nms", method="gaussian", sigma=0.5)  # R-CNNs
    model.test_cfg.nms = dict(type="plugins_soft_nms", method="linear", iou_threshold=0.3)  # dense

Keys: ``method`` (``"gaussian"`` / ``"linear"`` / ``"hard"``), ``sigma``, ``iou_threshold``
(or ``iou_thr``), ``min_score`` (or ``score_threshold``), ``max_num``, ``class_agnostic``; the
defaults are the core's (Gaussian, sigma 0.5, IoU 0.3, min score 0.001, all kept).

How it is hooked (installed once on ``import plugins.mm``, see :func:`install`):

* mmdet's post-processing ends in ``mmcv.ops.batched_nms(boxes, scores, labels, nms_cfg)``:
  ``multiclass_nms`` (RoI heads of Faster / Mask / Cascade R-CNN), ``BaseDenseHead.
  _bbox_post_process`` (FCOS, ATSS, GFL, RetinaNet, ...), ``RPNHead``, ``YOLOXHead`` and
  others. :func:`install` replaces ``batched_nms`` in ``mmcv.ops``, ``mmcv.ops.nms`` and every
  loaded ``mmdet`` module that imported it by a function that sends ``type="plugins_soft_nms"``
  to the core (class-wise, no box offsets) and everything else, unchanged, to mmcv.
* Code that imported ``batched_nms`` before the install (or outside mmdet) still reaches mmcv's,
  which ``eval``\\ s the type name in ``mmcv.ops.nms``: that module also gets a
  ``plugins_soft_nms`` function (same result on mmcv's class-offset boxes, one class at a time
  in float32 precision), so the type never fails with a ``NameError``.
* A misspelled NMS type fails when the model is built, not at the first validation: the
  ``MODELS`` registries of mmengine and mmdet check every ``nms=dict(type=...)`` in the config
  they build (:func:`check_nms_configs`); the message names the key and the close matches.

``check_nms_type`` and :data:`NMS_TYPES` are also what the config checker of ``tools/`` uses.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Mapping

import torch
from mmdet.models.dense_heads import RetinaHead
from mmdet.registry import MODELS
from mmengine.registry import MODELS as MMENGINE_MODELS
from torch import Tensor

from plugins.core._validate import check_tensor
from plugins.core.soft_nms import batched_soft_nms

__all__ = [
    "SOFT_NMS_TYPES",
    "MMCV_NMS_TYPES",
    "NMS_TYPES",
    "check_nms_type",
    "check_nms_configs",
    "install",
    "is_plugins_soft_nms",
    "plugins_batched_soft_nms",
    "SoftNMSPostProcessMixin",
    "PluginsRetinaHead",
]

SOFT_NMS_TYPES = ("plugins_soft_nms", "PluginsSoftNMS")
"""Accepted values of ``nms.type`` for the core soft-NMS."""

MMCV_NMS_TYPES = ("nms", "soft_nms", "nms_rotated", "nms_quadri")
"""The ``nms.type`` values mmcv 2.x's ``batched_nms`` resolves (functions of ``mmcv.ops.nms``)."""

NMS_TYPES = MMCV_NMS_TYPES + SOFT_NMS_TYPES
"""Every accepted ``nms.type`` string."""

# keys of the nms config and the core argument each one feeds
_KEY_MAP = {
    "method": "method",
    "sigma": "sigma",
    "iou_threshold": "iou_threshold",
    "iou_thr": "iou_threshold",
    "min_score": "score_threshold",
    "score_threshold": "score_threshold",
    "max_num": "max_detections",
    "max_detections": "max_detections",
}


def check_nms_type(type_name: object) -> None:
    """Raise ``ValueError`` unless ``type_name`` is an accepted ``nms.type``.

    Args:
        type_name: the ``type`` of an ``nms`` config (a string; a callable is accepted too, as
            ``mmcv.ops.batched_nms`` calls it directly).

    Raises:
        ValueError: naming the value, the accepted types and the closest matches.
    """
    if callable(type_name) or type_name in NMS_TYPES:
        return
    close = difflib.get_close_matches(str(type_name), NMS_TYPES, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown NMS type {type_name!r}; expected one of {list(NMS_TYPES)}{hint}")


def check_nms_configs(cfg: object, where: str = "model") -> None:
    """Check the ``type`` of every ``nms`` dict inside a (nested) config.

    Args:
        cfg: a model config (dicts, lists); anything else is ignored.
        where: the name of ``cfg`` in error messages.

    Raises:
        ValueError: ``"<where>.<path>.nms.type: unknown NMS type ..."``.
    """
    if isinstance(cfg, Mapping):
        for key, value in cfg.items():
            path = f"{where}.{key}"
            if key == "nms" and isinstance(value, Mapping) and "type" in value:
                try:
                    check_nms_type(value["type"])
                except ValueError as err:
                    raise ValueError(f"{path}.type: {err}") from None
            check_nms_configs(value, path)
    elif isinstance(cfg, (list, tuple)):
        for k, value in enumerate(cfg):
            check_nms_configs(value, f"{where}[{k}]")


def is_plugins_soft_nms(nms_cfg: Mapping | None) -> bool:
    """Whether an mmdet ``nms`` config asks for the core soft-NMS."""
    return nms_cfg is not None and nms_cfg.get("type") in SOFT_NMS_TYPES


def plugins_batched_soft_nms(
    bboxes: Tensor, scores: Tensor, labels: Tensor, nms_cfg: Mapping
) -> tuple[Tensor, Tensor]:
    """Class-wise soft-NMS with the interface of ``mmcv.ops.batched_nms``.

    Args:
        bboxes: ``Tensor[N, 4]`` boxes ``(x1, y1, x2, y2)``.
        scores: ``Tensor[N]`` scores.
        labels: ``Tensor[N]`` integer class ids; boxes of different classes never suppress
            each other (unless ``nms_cfg["class_agnostic"]``).
        nms_cfg: ``dict(type="plugins_soft_nms", method="gaussian", sigma=0.5,
            iou_threshold=0.3, min_score=1e-3, max_num=-1)``; the defaults are the core's
            (``method="gaussian"``, ``sigma=0.5``, ``iou_threshold=0.3``,
            ``min_score=0.001``, ``max_num=-1`` i.e. all).

    Returns:
        ``(dets, keep)``: ``Tensor[K, 5]`` boxes with their decayed scores and ``Tensor[K]``
        int64 indices into the input, sorted by decayed score, descending.

    Raises:
        ValueError: an unknown key in ``nms_cfg`` or bad tensor shapes.
    """
    sizes: dict[str, int] = {}
    check_tensor("bboxes", bboxes, ("N", 4), floating=True, sizes=sizes)
    check_tensor("scores", scores, ("N",), floating=True, sizes=sizes)
    check_tensor("labels", labels, ("N",), floating=False, sizes=sizes)
    kwargs = {}
    for key, value in nms_cfg.items():
        if key in ("type", "class_agnostic", "split_thr"):
            continue
        if key not in _KEY_MAP:
            raise ValueError(
                f"nms_cfg: unknown key {key!r} for {nms_cfg.get('type')!r}; "
                f"expected some of {sorted(_KEY_MAP)}"
            )
        kwargs[_KEY_MAP[key]] = value
    if nms_cfg.get("class_agnostic", False):
        labels = torch.zeros_like(labels)
    keep, new_scores = batched_soft_nms(bboxes, scores, labels, **kwargs)
    dets = torch.cat((bboxes[keep], new_scores[:, None].to(bboxes.dtype)), dim=1)
    return dets, keep


# ------------------------------------------------------------------------------------------
# The hook
# ------------------------------------------------------------------------------------------

# (``mmcv.ops.nms`` as an attribute is the nms function, which shadows the module)
_MMCV_NMS_MODULE = importlib.import_module("mmcv.ops.nms")
_MMCV_BATCHED_NMS: Callable = _MMCV_NMS_MODULE.batched_nms


def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    nms_cfg: Mapping | None,
    class_agnostic: bool = False,
) -> tuple[Tensor, Tensor]:
    """``mmcv.ops.batched_nms`` that also accepts ``nms_cfg.type="plugins_soft_nms"``.

    Same arguments and results as mmcv's; other types (and ``nms_cfg=None``) go to mmcv's
    function unchanged.
    """
    if is_plugins_soft_nms(nms_cfg):
        cfg = dict(nms_cfg)
        cfg["class_agnostic"] = cfg.get("class_agnostic", class_agnostic)  # mmcv's precedence
        return plugins_batched_soft_nms(boxes, scores, idxs, cfg)
    return _MMCV_BATCHED_NMS(boxes, scores, idxs, nms_cfg, class_agnostic)


def _offset_soft_nms(boxes: Tensor, scores: Tensor, **kwargs) -> tuple[Tensor, Tensor]:
    """What mmcv's own ``batched_nms`` calls for ``type="plugins_soft_nms"`` (it ``eval``\\ s the
    name in ``mmcv.ops.nms``): one class of class-offset boxes; ``(dets, keep)``."""
    labels = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return plugins_batched_soft_nms(boxes, scores, labels, dict(kwargs, type=SOFT_NMS_TYPES[0]))


def _checking_build(build_func: Callable) -> Callable:
    def build(cfg, *args, **kwargs):
        if isinstance(cfg, Mapping):
            check_nms_configs(cfg, str(cfg.get("type", "model")))
        return build_func(cfg, *args, **kwargs)

    build.plugins_checks_nms = True  # type: ignore[attr-defined]
    build.__wrapped__ = build_func  # type: ignore[attr-defined]
    return build


def install() -> None:
    """Install the hook (idempotent; done on ``import plugins.mm``).

    Replaces ``batched_nms`` in ``mmcv.ops``, ``mmcv.ops.nms`` and the loaded ``mmdet.*``
    modules that hold mmcv's function, defines ``plugins_soft_nms`` / ``PluginsSoftNMS`` in
    ``mmcv.ops.nms`` (for callers holding mmcv's function), and makes the ``MODELS``
    registries of mmengine and mmdet check NMS types before building.
    """
    for name in list(sys.modules):
        module = sys.modules[name]
        if module is None or not (
            name.startswith("mmdet.") or name in ("mmcv.ops", "mmcv.ops.nms")
        ):
            continue
        if getattr(module, "batched_nms", None) is _MMCV_BATCHED_NMS:
            module.batched_nms = batched_nms
    for type_name in SOFT_NMS_TYPES:
        setattr(_MMCV_NMS_MODULE, type_name, _offset_soft_nms)
    for registry in (MMENGINE_MODELS, MODELS):
        if not getattr(registry.build_func, "plugins_checks_nms", False):
            registry.build_func = _checking_build(registry.build_func)


class SoftNMSPostProcessMixin:
    """Kept for compatibility: dense heads no longer need it (the ``batched_nms`` hook of this
    module serves every head). Adds nothing."""


@MODELS.register_module()
class PluginsRetinaHead(SoftNMSPostProcessMixin, RetinaHead):
    """mmdet's ``RetinaHead`` under the name used by earlier configs of this package.

    Paper: `Focal Loss for Dense Object Detection <https://arxiv.org/abs/1708.02002>`_;
    soft-NMS: `Bodla et al. 2017 <https://arxiv.org/abs/1704.04503>`_. Same arguments as
    ``mmdet.models.dense_heads.RetinaHead``; ``test_cfg.nms.type="plugins_soft_nms"`` works on
    ``RetinaHead`` itself too.
    """


install()
