"""Soft-NMS from :mod:`plugins.core.soft_nms` in MMDetection's test-time post-processing.

mmdet's dense heads end in ``BaseDenseHead._bbox_post_process``, which hands ``test_cfg.nms``
to ``mmcv.ops.batched_nms``; mmcv only knows its own NMS types. Heads that mix in
:class:`SoftNMSPostProcessMixin` recognise our type and run the core soft-NMS instead::

    test_cfg = dict(
        nms_pre=1000, min_bbox_size=0, score_thr=0.05, max_per_img=100,
        nms=dict(type="plugins_soft_nms", method="gaussian", sigma=0.5,
                 iou_threshold=0.3, min_score=1e-3))

Any other ``nms.type`` (``"nms"``, ``"soft_nms"``, ...) still goes to mmcv. Registered here:
``PluginsRetinaHead`` (mmdet's ``RetinaHead`` with this post-processing).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from mmdet.models.dense_heads import RetinaHead
from mmdet.registry import MODELS
from mmdet.structures.bbox import get_box_tensor
from mmengine.structures import InstanceData
from torch import Tensor

from plugins.core._validate import check_tensor
from plugins.core.soft_nms import batched_soft_nms

__all__ = [
    "SOFT_NMS_TYPES",
    "is_plugins_soft_nms",
    "plugins_batched_soft_nms",
    "SoftNMSPostProcessMixin",
    "PluginsRetinaHead",
]

SOFT_NMS_TYPES = ("plugins_soft_nms", "PluginsSoftNMS")
"""Accepted values of ``test_cfg.nms.type`` for the core soft-NMS."""

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
            each other.
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


class SoftNMSPostProcessMixin:
    """Mixin for mmdet dense heads: run the core soft-NMS when ``test_cfg.nms`` asks for it.

    Put it before the mmdet head class in the bases. Rescaling, score factors and the
    ``min_bbox_size`` filter still run in mmdet's ``_bbox_post_process``; only the NMS step
    and the ``max_per_img`` cut are done here.
    """

    def _bbox_post_process(
        self,
        results: InstanceData,
        cfg,
        rescale: bool = False,
        with_nms: bool = True,
        img_meta: dict | None = None,
    ) -> InstanceData:
        """mmdet's post-processing with the core soft-NMS for ``plugins_soft_nms`` configs."""
        nms_cfg = cfg.get("nms") if cfg is not None else None
        if not is_plugins_soft_nms(nms_cfg):
            return super()._bbox_post_process(results, cfg, rescale, with_nms, img_meta)
        results = super()._bbox_post_process(
            results, cfg, rescale=rescale, with_nms=False, img_meta=img_meta
        )
        if with_nms and len(results) > 0:
            boxes = get_box_tensor(results.bboxes)
            dets, keep = plugins_batched_soft_nms(boxes, results.scores, results.labels, nms_cfg)
            results = results[keep]
            results.scores = dets[:, -1]
            max_per_img = cfg.get("max_per_img", -1)
            if max_per_img is not None and max_per_img >= 0:
                results = results[:max_per_img]
        return results


@MODELS.register_module()
class PluginsRetinaHead(SoftNMSPostProcessMixin, RetinaHead):
    """mmdet's ``RetinaHead`` that also accepts ``test_cfg.nms.type="plugins_soft_nms"``.

    Paper: `Focal Loss for Dense Object Detection <https://arxiv.org/abs/1708.02002>`_;
    soft-NMS: `Bodla et al. 2017 <https://arxiv.org/abs/1704.04503>`_. Same arguments as
    ``mmdet.models.dense_heads.RetinaHead``.
    """
