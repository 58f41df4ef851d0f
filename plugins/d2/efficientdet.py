"""EfficientDet for Detectron2: the EfficientNet+BiFPN backbone and the ``EfficientDet`` meta-arch.

`EfficientDet: Scalable and Efficient Object Detection <https://arxiv.org/abs/1911.09070>`_.

The network (EfficientNet, BiFPN, class/box heads), its anchors, box codes and losses come from
:mod:`plugins.core`; this module adapts them to Detectron2: a registered ``Backbone`` returning
``p3``..``p7``, anchor labelling with Detectron2's :class:`~detectron2.modeling.Matcher`,
``Instances`` in and out, and the pre/post-processing of
:class:`~detectron2.modeling.meta_arch.dense_detector.DenseDetector`.

Parameters live under the same prefixes as in the MMDetection adapter, up to a prefix swap:
``backbone.body`` (EfficientNet), ``backbone.fpn`` (BiFPN), ``head.class_net``, ``head.box_net``.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, batched_nms
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from plugins.core._validate import check_choice
from plugins.core.anchors import generate_anchors
from plugins.core.box_coder import decode_boxes, encode_boxes
from plugins.core.box_loss import huber_loss, smooth_l1_loss
from plugins.core.efficientdet import EfficientDet as CoreEfficientDet
from plugins.core.focal_loss import alpha_balanced_bce, sigmoid_focal_loss
from plugins.core.soft_nms import batched_soft_nms
from plugins.core.variants import EfficientDetVariant, get_variant

from .config import BOX_LOSS_TYPES, CLS_LOSS_TYPES, NMS_TYPES

__all__ = [
    "EfficientNetBiFPN",
    "EfficientDetHead",
    "EfficientDet",
    "build_efficientnet_bifpn_backbone",
    "classification_loss",
    "nms_from_config",
    "select_detections",
    "variant_from_cfg",
]

logger = logging.getLogger(__name__)


class EfficientNetBiFPN(Backbone):
    """Detectron2 backbone wrapping the core EfficientNet and BiFPN.

    Paper: https://arxiv.org/abs/1911.09070.

    Args:
        body: core :class:`~plugins.core.efficientnet.EfficientNet` giving the finest BiFPN inputs.
        fpn: core :class:`~plugins.core.bifpn.BiFPN` giving ``fpn.num_levels`` maps.
        min_level: pyramid level of the first BiFPN output (3 -> ``"p3"``, stride 8).
        size_divisibility: input sides are padded to a multiple of this; 0 means
            ``2 ** max_level`` (128 for P3-P7, 256 for D7x's P3-P8).

    Attributes:
        body, fpn: the core modules (state-dict prefixes ``body.`` and ``fpn.``).
    """

    def __init__(
        self, body: nn.Module, fpn: nn.Module, min_level: int = 3, size_divisibility: int = 0
    ) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        levels = range(min_level, min_level + fpn.num_levels)
        self._out_features = [f"p{lvl}" for lvl in levels]
        self._out_feature_strides = {f"p{lvl}": 2**lvl for lvl in levels}
        self._out_feature_channels = {name: fpn.width for name in self._out_features}
        self._size_divisibility = int(size_divisibility) or 2 ** (levels[-1])

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Compute the pyramid.

        Args:
            x: ``(B, 3, H, W)`` normalised images.

        Returns:
            ``{"p3": (B, C, H/8, W/8), ..., "p7": (B, C, H/128, W/128)}`` (sides rounded up).
        """
        return dict(zip(self._out_features, self.fpn(self.body(x))))

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name],
                stride=self._out_feature_strides[name],
            )
            for name in self._out_features
        }


def variant_from_cfg(cfg) -> EfficientDetVariant:
    """The core variant named by ``MODEL.EFFICIENTDET.VARIANT`` with the config's overrides.

    ``FPN_CHANNELS``, ``FPN_REPEATS``, ``HEAD_REPEATS`` and ``ANCHOR_SCALE`` replace the table
    values when non-zero (the result is named ``<variant>_custom`` and has no expected
    parameter count).
    """
    node = cfg.MODEL.EFFICIENTDET
    try:
        variant = get_variant(node.VARIANT)
    except ValueError as e:
        raise ValueError(f"MODEL.EFFICIENTDET.VARIANT: {e}") from None
    changes = {
        field: value
        for field, value in (
            ("fpn_channels", node.FPN_CHANNELS),
            ("fpn_repeats", node.FPN_REPEATS),
            ("head_repeats", node.HEAD_REPEATS),
            ("anchor_scale", node.ANCHOR_SCALE),
        )
        if value
    }
    if not changes:
        return variant
    return dataclasses.replace(variant, name=f"{variant.name}_custom", expected_params=0, **changes)


def _core_network(cfg) -> CoreEfficientDet:
    return CoreEfficientDet(variant_from_cfg(cfg), cfg.MODEL.EFFICIENTDET.NUM_CLASSES)


def _wrap_backbone(net: CoreEfficientDet) -> EfficientNetBiFPN:
    return EfficientNetBiFPN(net.backbone, net.fpn, min_level=net.variant.min_level)


@BACKBONE_REGISTRY.register()
def build_efficientnet_bifpn_backbone(cfg, input_shape: ShapeSpec) -> EfficientNetBiFPN:
    """Build the EfficientNet + BiFPN backbone of ``cfg.MODEL.EFFICIENTDET.VARIANT``.

    Args:
        cfg: a config with the plugins' keys (:func:`plugins.d2.config.add_plugins_config`).
        input_shape: input image shape; only 3 channels are supported.

    Returns:
        :class:`EfficientNetBiFPN` with outputs ``p3``..``p7`` (``p8`` for D7x).
    """
    if input_shape.channels not in (None, 3):
        raise ValueError(
            f"input_shape: expected 3 channels (len(MODEL.PIXEL_MEAN)), got {input_shape.channels}"
        )
    return _wrap_backbone(_core_network(cfg))


class EfficientDetHead(nn.Module):
    """The EfficientDet class and box prediction networks (core ``DetectionHead`` modules).

    Args:
        class_net: core head with ``num_classes`` outputs per anchor.
        box_net: core head with 4 outputs ``(ty, tx, th, tw)`` per anchor.
    """

    def __init__(self, class_net: nn.Module, box_net: nn.Module) -> None:
        super().__init__()
        self.class_net = class_net
        self.box_net = box_net

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level ``(B, C, H_l, W_l)`` -> ``(B, A*K, H_l, W_l)`` logits, ``(B, A*4, H_l, W_l)`` codes."""
        return self.class_net(features), self.box_net(features)


class _CoreBoxCoder:
    """``Box2BoxTransform``-like view of the core box codes (for DenseDetector's decoding)."""

    @staticmethod
    def apply_deltas(deltas: Tensor, boxes: Tensor) -> Tensor:
        return decode_boxes(deltas, boxes)

    @staticmethod
    def get_deltas(src_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        return encode_boxes(target_boxes, src_boxes)


def classification_loss(
    loss_type: str, logits: Tensor, targets: Tensor, alpha: float, gamma: float
) -> Tensor:
    """Summed classification loss of the chosen variant (core focal losses).

    Args:
        loss_type: ``"sigmoid_focal"`` or ``"alpha_balanced_bce"`` (focal with gamma 0).
        logits: ``Tensor[M, K]`` class logits.
        targets: ``Tensor[M, K]`` float one-hot targets (all zeros for background).
        alpha: positive weight (``< 0`` disables balancing).
        gamma: focusing exponent (ignored by ``"alpha_balanced_bce"``).

    Returns:
        Scalar sum over all elements.
    """
    if loss_type == "sigmoid_focal":
        return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="sum")
    if loss_type == "alpha_balanced_bce":
        return alpha_balanced_bce(logits, targets, alpha=alpha, reduction="sum")
    raise ValueError(f"CLS_LOSS_TYPE: expected one of {list(CLS_LOSS_TYPES)}, got {loss_type!r}")


def nms_from_config(cfg) -> dict:
    """Constructor arguments of :func:`select_detections` from ``cfg.MODEL.NMS``."""
    node = cfg.MODEL.NMS
    check_choice("MODEL.NMS.TYPE", node.TYPE, NMS_TYPES)
    max_det = node.MAX_DETECTIONS if node.MAX_DETECTIONS > 0 else cfg.TEST.DETECTIONS_PER_IMAGE
    return {
        "nms_type": node.TYPE,
        "nms_iou_threshold": node.IOU_THRESHOLD,
        "soft_nms_sigma": node.SIGMA,
        "soft_nms_score_threshold": node.SCORE_THRESHOLD,
        "max_detections_per_image": max_det,
    }


def select_detections(
    pred: Instances,
    nms_type: str,
    iou_threshold: float,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    max_detections: int = 100,
) -> Instances:
    """Per-class NMS over one image's candidates.

    Args:
        pred: candidates with ``pred_boxes`` (``Boxes``, ``Tensor[N, 4]``), ``scores``
            (``Tensor[N]``) and ``pred_classes`` (``Tensor[N]`` int64).
        nms_type: ``"hard"`` (detectron2's ``batched_nms``), ``"linear"`` or ``"gaussian"``
            (core :func:`~plugins.core.soft_nms.batched_soft_nms`, whose decayed scores replace
            ``scores``).
        iou_threshold: hard-NMS / linear Soft-NMS IoU threshold.
        sigma: Gaussian Soft-NMS sigma. Default 0.5.
        score_threshold: Soft-NMS drops boxes whose decayed score falls below it. Default 0.001.
        max_detections: detections kept (highest scores first). Default 100.

    Returns:
        The kept ``Instances``, sorted by (decayed) score, descending.
    """
    boxes, scores, classes = pred.pred_boxes.tensor, pred.scores, pred.pred_classes
    if nms_type == "hard":
        keep = batched_nms(boxes, scores, classes, iou_threshold)
        return pred[keep[:max_detections]]
    keep, new_scores = batched_soft_nms(
        boxes,
        scores,
        classes,
        method=nms_type,
        sigma=sigma,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        max_detections=max_detections,
    )
    out = pred[keep]
    out.scores = new_scores.to(scores.dtype)
    return out


@META_ARCH_REGISTRY.register()
class EfficientDet(DenseDetector):
    """EfficientDet detector (Detectron2 meta-architecture ``"EfficientDet"``).

    Paper: https://arxiv.org/abs/1911.09070.

    Training: anchors of the variant (:func:`plugins.core.anchors.generate_anchors`) on the padded
    batch, labelled by a :class:`Matcher` (IoU >= 0.5 positive, < 0.5 background; each ground
    truth keeps its best anchor), focal (or alpha-balanced BCE) class loss divided by
    ``num_pos + 1``, Huber (or smooth-L1) loss on the ``(ty, tx, th, tw)`` codes divided by
    ``4 (num_pos + 1)`` and weighted by ``box_loss_weight``.

    Inference: per level, scores above ``test_score_thresh`` (at most ``test_topk_candidates``),
    decoded, clipped to the image, then per-class hard NMS or Soft-NMS; ``Instances`` resized to
    the requested output size by ``detector_postprocess``.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: EfficientDetHead,
        head_in_features: list[str],
        variant: EfficientDetVariant,
        anchor_matcher: Matcher,
        num_classes: int,
        cls_loss_type: str = "sigmoid_focal",
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 1.5,
        box_loss_type: str = "huber",
        huber_delta: float = 0.1,
        smooth_l1_beta: float = 0.1,
        box_loss_weight: float = 50.0,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        nms_type: str = "hard",
        nms_iou_threshold: float = 0.5,
        soft_nms_sigma: float = 0.5,
        soft_nms_score_threshold: float = 0.001,
        max_detections_per_image: int = 100,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        vis_period: int = 0,
        input_format: str = "RGB",
    ) -> None:
        """
        Args:
            backbone: a Detectron2 backbone giving ``head_in_features``.
            head: :class:`EfficientDetHead`.
            head_in_features: backbone outputs fed to the head, finest first.
            variant: core variant (anchor layout: levels, scales, ratios, anchor scale).
            anchor_matcher: labels anchors (0 background, 1 foreground, -1 ignored).
            num_classes: object classes (no background).
            cls_loss_type: ``"sigmoid_focal"`` or ``"alpha_balanced_bce"``. Default focal.
            focal_loss_alpha: Default 0.25.
            focal_loss_gamma: Default 1.5.
            box_loss_type: ``"huber"`` or ``"smooth_l1"``. Default ``"huber"``.
            huber_delta: Default 0.1.
            smooth_l1_beta: Default 0.1.
            box_loss_weight: Default 50.
            test_score_thresh: candidate score threshold. Default 0.05.
            test_topk_candidates: candidates per level. Default 1000.
            nms_type: ``"hard"``, ``"linear"`` or ``"gaussian"``. Default ``"hard"``.
            nms_iou_threshold: Default 0.5.
            soft_nms_sigma: Default 0.5.
            soft_nms_score_threshold: Default 0.001.
            max_detections_per_image: Default 100.
            pixel_mean, pixel_std: normalisation, in ``input_format`` channel order.
            vis_period: Detectron2's training visualisation period (0 = off). Default 0.
            input_format: ``"RGB"`` or ``"BGR"``. Default ``"RGB"``.
        """
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        check_choice("cls_loss_type", cls_loss_type, CLS_LOSS_TYPES)
        check_choice("box_loss_type", box_loss_type, BOX_LOSS_TYPES)
        check_choice("nms_type", nms_type, NMS_TYPES)
        if len(head_in_features) != variant.num_levels:
            raise ValueError(
                f"head_in_features: expected {variant.num_levels} levels for {variant.name}, "
                f"got {list(head_in_features)}"
            )
        self.variant = variant
        self.num_classes = int(num_classes)
        self.anchor_matcher = anchor_matcher
        self.box2box_transform = _CoreBoxCoder()
        self.cls_loss_type = cls_loss_type
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.box_loss_type = box_loss_type
        self.huber_delta = huber_delta
        self.smooth_l1_beta = smooth_l1_beta
        self.box_loss_weight = box_loss_weight
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.nms_type = nms_type
        self.nms_iou_threshold = nms_iou_threshold
        self.soft_nms_sigma = soft_nms_sigma
        self.soft_nms_score_threshold = soft_nms_score_threshold
        self.max_detections_per_image = max_detections_per_image
        self.vis_period = vis_period
        self.input_format = input_format
        self._anchor_cache: dict[tuple, Tensor] = {}

    @classmethod
    def from_config(cls, cfg) -> dict:
        node = cfg.MODEL.EFFICIENTDET
        net = _core_network(cfg)
        if cfg.MODEL.BACKBONE.NAME == "build_efficientnet_bifpn_backbone":
            backbone = _wrap_backbone(net)  # reuse the modules built above
        else:
            backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        in_features = list(node.IN_FEATURES) or sorted(shapes, key=lambda f: shapes[f].stride)
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.EFFICIENTDET.IN_FEATURES: {missing} not produced by the backbone "
                f"(outputs: {sorted(shapes)})"
            )
        widths = {shapes[f].channels for f in in_features}
        if widths != {net.variant.fpn_channels}:
            raise ValueError(
                f"MODEL.EFFICIENTDET.IN_FEATURES: expected {net.variant.fpn_channels} channels "
                f"on every level for {net.variant.name}, got {sorted(widths)}"
            )
        return {
            "backbone": backbone,
            "head": EfficientDetHead(net.class_net, net.box_net),
            "head_in_features": in_features,
            "variant": net.variant,
            "anchor_matcher": Matcher(
                node.IOU_THRESHOLDS, node.IOU_LABELS, allow_low_quality_matches=True
            ),
            "num_classes": node.NUM_CLASSES,
            "cls_loss_type": node.CLS_LOSS_TYPE,
            "focal_loss_alpha": node.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": node.FOCAL_LOSS_GAMMA,
            "box_loss_type": node.BOX_LOSS_TYPE,
            "huber_delta": node.HUBER_DELTA,
            "smooth_l1_beta": node.SMOOTH_L1_BETA,
            "box_loss_weight": node.BOX_LOSS_WEIGHT,
            "test_score_thresh": node.SCORE_THRESH_TEST,
            "test_topk_candidates": node.TOPK_CANDIDATES_TEST,
            **nms_from_config(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
        }

    # ------------------------------------------------------------------ anchors
    def anchors(self, image_size: tuple[int, int]) -> Tensor:
        """Anchors of a padded batch of size ``(H, W)``: ``Tensor[R, 4]`` xyxy, level-y-x-anchor order."""
        key = (int(image_size[0]), int(image_size[1]), str(self.device))
        if key not in self._anchor_cache:
            v = self.variant
            self._anchor_cache[key] = generate_anchors(
                key[:2],
                v.min_level,
                v.max_level,
                v.num_scales,
                v.aspect_ratios,
                v.anchor_scale,
                device=self.device,
            )
        return self._anchor_cache[key]

    def _anchors_per_level(self, images: ImageList, features: list[Tensor]) -> list[Boxes]:
        anchors = self.anchors(tuple(images.tensor.shape[-2:]))
        counts = [f.shape[-2] * f.shape[-1] * self.variant.num_anchors for f in features]
        if sum(counts) != anchors.shape[0]:
            raise ValueError(
                f"features: expected {anchors.shape[0]} anchors for a padded batch of size "
                f"{tuple(images.tensor.shape[-2:])}, the feature maps give {sum(counts)}"
            )
        return [Boxes(a) for a in anchors.split(counts)]

    # ------------------------------------------------------------------ training
    def forward_training(
        self,
        images: ImageList,
        features: list[Tensor],
        predictions: tuple[list[Tensor], list[Tensor]],
        gt_instances: list[Instances],
    ) -> dict[str, Tensor]:
        logits, codes = self._transpose_dense_predictions(predictions, [self.num_classes, 4])
        anchors = Boxes.cat(self._anchors_per_level(images, features))
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, torch.cat(logits, 1), gt_labels, torch.cat(codes, 1), gt_boxes)

    @torch.no_grad()
    def label_anchors(self, anchors: Boxes, gt_instances: list[Instances]) -> tuple[Tensor, Tensor]:
        """Assign a class (or background / ignore) and a target box to every anchor.

        Args:
            anchors: ``R`` anchors of the padded batch.
            gt_instances: per image, ``gt_boxes`` and ``gt_classes``.

        Returns:
            ``(labels Tensor[N, R] int64, boxes Tensor[N, R, 4])``: labels in ``0..K-1`` for
            foreground, ``K`` background, ``-1`` ignored; boxes are the matched ground truths
            (meaningless where not foreground).
        """
        labels, boxes = [], []
        for gt in gt_instances:
            if len(gt) == 0:
                labels.append(
                    torch.full(
                        (len(anchors),), self.num_classes, dtype=torch.int64, device=self.device
                    )
                )
                boxes.append(torch.zeros_like(anchors.tensor))
                continue
            matched, match_labels = self.anchor_matcher(pairwise_iou(gt.gt_boxes, anchors))
            cls = gt.gt_classes[matched].clone()
            cls[match_labels == 0] = self.num_classes
            cls[match_labels == -1] = -1
            labels.append(cls)
            boxes.append(gt.gt_boxes.tensor[matched])
        return torch.stack(labels), torch.stack(boxes)

    def losses(
        self,
        anchors: Boxes,
        pred_logits: Tensor,
        gt_labels: Tensor,
        pred_codes: Tensor,
        gt_boxes: Tensor,
    ) -> dict[str, Tensor]:
        """EfficientDet losses.

        Args:
            anchors: ``R`` anchors.
            pred_logits: ``Tensor[N, R, K]``.
            gt_labels: ``Tensor[N, R]`` from :meth:`label_anchors`.
            pred_codes: ``Tensor[N, R, 4]`` predicted ``(ty, tx, th, tw)``.
            gt_boxes: ``Tensor[N, R, 4]`` matched boxes.

        Returns:
            ``{"loss_cls", "loss_box_reg"}`` scalars.
        """
        valid = gt_labels >= 0
        pos = valid & (gt_labels != self.num_classes)
        num_pos = int(pos.sum().item())
        get_event_storage().put_scalar("num_pos_anchors", num_pos / max(len(gt_labels), 1))
        normalizer = num_pos + 1.0

        onehot = F.one_hot(gt_labels[valid], self.num_classes + 1)[:, : self.num_classes]
        loss_cls = classification_loss(
            self.cls_loss_type,
            pred_logits[valid],
            onehot.to(pred_logits.dtype),
            self.focal_loss_alpha,
            self.focal_loss_gamma,
        )

        anchors_t = anchors.tensor.unsqueeze(0).expand_as(gt_boxes)
        target_codes = encode_boxes(gt_boxes[pos].float(), anchors_t[pos])
        pred = pred_codes[pos].float()
        if self.box_loss_type == "huber":
            loss_box = huber_loss(pred, target_codes, delta=self.huber_delta, reduction="sum")
        else:
            loss_box = smooth_l1_loss(pred, target_codes, beta=self.smooth_l1_beta, reduction="sum")
        return {
            "loss_cls": loss_cls / normalizer,
            "loss_box_reg": loss_box * (self.box_loss_weight / (4.0 * normalizer)),
        }

    # ------------------------------------------------------------------ inference
    def forward_inference(
        self,
        images: ImageList,
        features: list[Tensor],
        predictions: tuple[list[Tensor], list[Tensor]],
    ) -> list[Instances]:
        logits, codes = self._transpose_dense_predictions(predictions, [self.num_classes, 4])
        anchors = self._anchors_per_level(images, features)
        results = []
        for i, image_size in enumerate(images.image_sizes):
            scores = [x[i].sigmoid() for x in logits]
            deltas = [x[i] for x in codes]
            results.append(self.inference_single_image(anchors, scores, deltas, image_size))
        return results

    def inference_single_image(
        self,
        anchors: list[Boxes],
        scores: list[Tensor],
        codes: list[Tensor],
        image_size: tuple[int, int],
    ) -> Instances:
        """Detections of one image.

        Args:
            anchors: per level, ``H_l * W_l * A`` anchors.
            scores: per level, ``Tensor[H_l * W_l * A, K]`` probabilities.
            codes: per level, ``Tensor[H_l * W_l * A, 4]`` box codes.
            image_size: ``(h, w)`` of the (resized, unpadded) input image.

        Returns:
            ``Instances`` with ``pred_boxes`` (clipped to ``image_size``), ``scores`` in [0, 1]
            and ``pred_classes``.
        """
        pred = self._decode_multi_level_predictions(
            anchors, scores, codes, self.test_score_thresh, self.test_topk_candidates, image_size
        )
        pred.pred_boxes.clip(image_size)
        return select_detections(
            pred,
            self.nms_type,
            self.nms_iou_threshold,
            self.soft_nms_sigma,
            self.soft_nms_score_threshold,
            self.max_detections_per_image,
        )
