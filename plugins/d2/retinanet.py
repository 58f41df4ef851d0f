"""Detectron2's RetinaNet with Soft-NMS and the focal-loss variants (meta-arch ``RetinaNetPlus``).

`Focal Loss for Dense Object Detection <https://arxiv.org/abs/1708.02002>`_;
`Soft-NMS <https://arxiv.org/abs/1704.04503>`_.

:class:`RetinaNetPlus` subclasses Detectron2's :class:`~detectron2.modeling.RetinaNet` and keeps
its backbone, head, anchors, matcher and decoding; it replaces only

- the classification loss: core ``sigmoid_focal_loss`` or ``alpha_balanced_bce``
  (``MODEL.RETINANET.CLS_LOSS_TYPE``),
- the box loss when ``MODEL.RETINANET.BBOX_REG_LOSS_TYPE`` is ``"huber"`` (core ``huber_loss`` on
  the ``Box2BoxTransform`` deltas; other types go to Detectron2's own code), scaled by
  ``MODEL.RETINANET.BOX_LOSS_WEIGHT``,
- the NMS when ``MODEL.NMS.TYPE`` is ``"linear"`` or ``"gaussian"`` (core ``batched_soft_nms``).

With the defaults it computes exactly what ``RetinaNet`` computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage
from torch import Tensor

from plugins.core._validate import check_choice
from plugins.core.box_loss import huber_loss

from .config import CLS_LOSS_TYPES, NMS_TYPES
from .efficientdet import classification_loss, nms_from_config, select_detections

__all__ = ["RetinaNetPlus"]


@META_ARCH_REGISTRY.register()
class RetinaNetPlus(RetinaNet):
    """RetinaNet with configurable classification/box losses and Soft-NMS.

    Paper: https://arxiv.org/abs/1708.02002.
    """

    @configurable
    def __init__(
        self,
        *,
        cls_loss_type: str = "sigmoid_focal",
        huber_delta: float = 0.1,
        box_loss_weight: float = 1.0,
        nms_type: str = "hard",
        nms_iou_threshold: float = 0.5,
        soft_nms_sigma: float = 0.5,
        soft_nms_score_threshold: float = 0.001,
        **kwargs,
    ) -> None:
        """
        Args:
            cls_loss_type: ``"sigmoid_focal"`` or ``"alpha_balanced_bce"``. Default focal.
            huber_delta: Huber delta for ``box_reg_loss_type="huber"``. Default 0.1.
            box_loss_weight: multiplies the box loss. Default 1.0.
            nms_type: ``"hard"`` (RetinaNet's own NMS), ``"linear"`` or ``"gaussian"``.
            nms_iou_threshold: Soft-NMS IoU threshold (linear). Default 0.5.
            soft_nms_sigma: Gaussian Soft-NMS sigma. Default 0.5.
            soft_nms_score_threshold: Soft-NMS minimum decayed score. Default 0.001.
            **kwargs: :class:`~detectron2.modeling.RetinaNet` arguments.
        """
        super().__init__(**kwargs)
        check_choice("cls_loss_type", cls_loss_type, CLS_LOSS_TYPES)
        check_choice("nms_type", nms_type, NMS_TYPES)
        self.cls_loss_type = cls_loss_type
        self.huber_delta = huber_delta
        self.box_loss_weight = box_loss_weight
        self.nms_type = nms_type
        self.nms_iou_threshold = nms_iou_threshold
        self.soft_nms_sigma = soft_nms_sigma
        self.soft_nms_score_threshold = soft_nms_score_threshold

    @classmethod
    def from_config(cls, cfg) -> dict:
        ret = super().from_config(cfg)
        node = cfg.MODEL.RETINANET
        nms = nms_from_config(cfg)
        ret.update(
            cls_loss_type=node.CLS_LOSS_TYPE,
            huber_delta=node.HUBER_DELTA,
            box_loss_weight=node.BOX_LOSS_WEIGHT,
            nms_type=nms["nms_type"],
            nms_iou_threshold=nms["nms_iou_threshold"],
            soft_nms_sigma=nms["soft_nms_sigma"],
            soft_nms_score_threshold=nms["soft_nms_score_threshold"],
        )
        if nms["nms_type"] != "hard":
            ret["max_detections_per_image"] = nms["max_detections_per_image"]
        return ret

    def losses(
        self,
        anchors: list[Boxes],
        pred_logits: list[Tensor],
        gt_labels: list[Tensor],
        pred_anchor_deltas: list[Tensor],
        gt_boxes: list[Tensor],
    ) -> dict[str, Tensor]:
        """RetinaNet's losses with the configured class/box loss (same arguments as the parent)."""
        labels = torch.stack(gt_labels)  # (N, R)
        valid = labels >= 0
        pos = valid & (labels != self.num_classes)
        num_pos = pos.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_pos / len(gt_labels))
        normalizer = self._ema_update("loss_normalizer", max(num_pos, 1), 100)

        logits = torch.cat(pred_logits, dim=1)[valid]
        onehot = F.one_hot(labels[valid], self.num_classes + 1)[:, : self.num_classes]
        loss_cls = classification_loss(
            self.cls_loss_type,
            logits,
            onehot.to(logits.dtype),
            self.focal_loss_alpha,
            self.focal_loss_gamma,
        )

        if self.box_reg_loss_type == "huber":
            all_anchors = Boxes.cat(anchors).tensor
            targets = [self.box2box_transform.get_deltas(all_anchors, b) for b in gt_boxes]
            targets = torch.stack(targets)[pos]
            loss_box = huber_loss(
                torch.cat(pred_anchor_deltas, dim=1)[pos], targets, self.huber_delta, "sum"
            )
        else:
            loss_box = _dense_box_regression_loss(
                anchors,
                self.box2box_transform,
                pred_anchor_deltas,
                gt_boxes,
                pos,
                box_reg_loss_type=self.box_reg_loss_type,
                smooth_l1_beta=self.smooth_l1_beta,
            )
        return {
            "loss_cls": loss_cls / normalizer,
            "loss_box_reg": loss_box * self.box_loss_weight / normalizer,
        }

    def inference_single_image(
        self,
        anchors: list[Boxes],
        box_cls: list[Tensor],
        box_delta: list[Tensor],
        image_size: tuple[int, int],
    ) -> Instances:
        """RetinaNet's inference; Soft-NMS replaces hard NMS when configured."""
        if self.nms_type == "hard":
            return super().inference_single_image(anchors, box_cls, box_delta, image_size)
        pred = self._decode_multi_level_predictions(
            anchors,
            box_cls,
            box_delta,
            self.test_score_thresh,
            self.test_topk_candidates,
            image_size,
        )
        return select_detections(
            pred,
            self.nms_type,
            self.nms_iou_threshold,
            self.soft_nms_sigma,
            self.soft_nms_score_threshold,
            self.max_detections_per_image,
        )
