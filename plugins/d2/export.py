"""Detectron2 models -> :class:`plugins.export.detector.ExportableDetector` (ONNX export).

Translates a built Detectron2 model of ours (``EfficientDet``, ``RetinaNet`` / ``RetinaNetPlus``,
``CornerNet``) into the framework-free exportable module: the same network modules (shared,
not copied), the anchors of the fixed input size, and the post-processing settings of the
model's inference path, step by step (see :mod:`plugins.export.detector`).
"""

from __future__ import annotations

import torch
from detectron2.modeling import RetinaNet
from torch import Tensor, nn

from plugins.core.anchors import feature_sizes, generate_anchors
from plugins.export.detector import (
    AnchorDecoder,
    CornerDecoder,
    ExportableDetector,
    Selection,
    check_input_size,
    corner_head_last_level,
    efficientdet_box_decoder,
)

from .cornernet import CornerNet
from .efficientdet import EfficientDet

__all__ = [
    "TORCHVISION_SHIFT_LIMIT",
    "exportable_detector",
    "family_of",
    "hard_nms_twin",
    "size_divisibility",
]

TORCHVISION_SHIFT_LIMIT = 1000
"""``torchvision.ops.batched_nms`` shifts boxes by class (one NMS) up to 4000 coordinates on
CPU, i.e. 1000 boxes, and runs one NMS per class above that."""


def family_of(model: nn.Module) -> str:
    """``"efficientdet"``, ``"retinanet"`` or ``"cornernet"``.

    Raises:
        ValueError: a meta-architecture the export does not handle.
    """
    if isinstance(model, EfficientDet):
        return "efficientdet"
    if isinstance(model, RetinaNet):
        return "retinanet"
    if isinstance(model, CornerNet):
        return "cornernet"
    raise ValueError(
        f"MODEL.META_ARCHITECTURE: export handles EfficientDet, RetinaNet(Plus) and CornerNet, "
        f"got {type(model).__name__}"
    )


def size_divisibility(model: nn.Module) -> int:
    """Inputs are padded to multiples of this; an exported size must be one."""
    return max(int(model.backbone.size_divisibility), 1)


class _DenseNetwork(nn.Module):
    """``images -> (class maps, box maps)`` per level: the backbone and head of a dense model."""

    def __init__(self, backbone: nn.Module, head: nn.Module, in_features: list[str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.in_features = list(in_features)

    def forward(self, images: Tensor):
        feats = self.backbone(images)
        return self.head([feats[f] for f in self.in_features])


class _CornerNetwork(nn.Module):
    """``images -> dict of per-stack corner maps``: backbone and head of :class:`CornerNet`."""

    def __init__(self, model: CornerNet) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head

    def forward(self, images: Tensor):
        feats = self.backbone(images)
        return corner_head_last_level(self.head.net, feats[self.backbone._out_features[-1]])


def _nms_iou(model: nn.Module, family: str, override: float | None) -> tuple[float, str]:
    """IoU threshold of the exported hard NMS, and what the model itself does."""
    if family == "cornernet":
        method = model.soft_nms_method if model.soft_nms_enabled else "none"
        iou = model.soft_nms_iou_threshold
    elif isinstance(model, EfficientDet) or getattr(model, "nms_type", "hard") != "hard":
        method, iou = model.nms_type, model.nms_iou_threshold
    else:  # detectron2's RetinaNet (or RetinaNetPlus with hard NMS)
        method, iou = "hard", model.test_nms_thresh
    return (float(override) if override is not None else float(iou)), method


def exportable_detector(
    model: nn.Module,
    input_size: tuple[int, int],
    nms_iou_threshold: float | None = None,
    input_dtype: str = "uint8",
) -> tuple[ExportableDetector, dict]:
    """The exportable module of a Detectron2 model, at ``input_size``.

    Args:
        model: a built model of ours (weights loaded), any device; it is used on CPU.
        input_size: ``(H, W)``, multiples of :func:`size_divisibility`.
        nms_iou_threshold: IoU threshold of the exported hard NMS; ``None`` takes the
            model's (for a soft-NMS model: its ``MODEL.NMS.IOU_THRESHOLD`` /
            ``SOFT_NMS.IOU_THRESHOLD``). Default ``None``.
        input_dtype: ``"uint8"`` or ``"float32"``. Default ``"uint8"``.

    Returns:
        ``(detector, info)``: ``info`` holds ``family``, ``model_nms`` (what the model runs:
        ``"hard"``, ``"gaussian"``, ``"linear"`` or ``"none"``) and ``nms_iou_threshold``.

    Raises:
        ValueError: unsupported model, or an input size the model cannot take.
    """
    family = family_of(model)
    model = model.eval().cpu()
    h, w = check_input_size(input_size, size_divisibility(model), "backbone size_divisibility")
    iou, method = _nms_iou(model, family, nms_iou_threshold)
    after = (h, w)  # detector_postprocess at the input's own size: clip, drop empty boxes
    if family == "cornernet":
        network = _CornerNetwork(model)
        decoder = CornerDecoder(
            (h, w),
            k=model.topk,
            kernel=model.local_maximum_kernel,
            distance_threshold=model.distance_threshold,
            num_dets=model.pre_nms_topk,
            score_threshold=model.score_thresh,
        )
        nms_on = model.soft_nms_enabled
        selection = Selection(
            num_classes=model.num_classes,
            max_detections=model.max_detections,
            nms_iou_threshold=iou if nms_on else None,
            nms_min_score=model.soft_nms_score_threshold if nms_on else None,
            shift_limit=TORCHVISION_SHIFT_LIMIT,
            clip_after=after,
        )
        channels = model.input_format
    else:
        network = _DenseNetwork(model.backbone, model.head, model.head_in_features)
        with torch.no_grad():
            maps = network(torch.zeros(1, 3, h, w))[0]
        sizes = [int(m.shape[-2]) * int(m.shape[-1]) for m in maps]
        if family == "efficientdet":
            v = model.variant
            anchors = generate_anchors(
                (h, w), v.min_level, v.max_level, v.num_scales, v.aspect_ratios, v.anchor_scale
            )
            expected = feature_sizes((h, w), v.max_level)[v.min_level :]
            if sizes != [a * b for a, b in expected]:
                raise ValueError(f"size: feature maps {sizes} do not match anchors {expected}")
            num_anchors, decode = v.num_anchors, efficientdet_box_decoder()
            max_det, clip_before = model.max_detections_per_image, (h, w)
        else:
            anchors = torch.cat(
                [
                    b.tensor
                    for b in model.anchor_generator(
                        [torch.zeros(1, 1, *m.shape[-2:]) for m in maps]
                    )
                ]
            )
            num_anchors = model.anchor_generator.num_cell_anchors[0]
            transform = model.box2box_transform

            def decode(codes: Tensor, anchors: Tensor) -> Tensor:
                flat = transform.apply_deltas(codes.reshape(-1, 4), anchors.reshape(-1, 4))
                return flat.reshape(codes.shape)

            max_det, clip_before = model.max_detections_per_image, None
        decoder = AnchorDecoder(
            anchors,
            sizes,
            num_anchors,
            model.num_classes,
            model.test_topk_candidates,
            model.test_score_thresh,
            decode,
        )
        selection = Selection(
            num_classes=model.num_classes,
            max_detections=max_det,
            nms_iou_threshold=iou,
            clip_before_nms=clip_before,
            shift_limit=TORCHVISION_SHIFT_LIMIT,
            clip_after=after,
        )
        channels = model.input_format
    detector = ExportableDetector(
        network,
        decoder,
        selection,
        (h, w),
        model.pixel_mean.flatten().tolist(),
        model.pixel_std.flatten().tolist(),
        network_channels=channels,
        input_dtype=input_dtype,
    )
    info = {"family": family, "model_nms": method, "nms_iou_threshold": selection.nms_iou_threshold}
    return detector, info


def hard_nms_twin(model: nn.Module) -> nn.Module:
    """Switch a model's test-time NMS to hard NMS in place (what the export runs); returns it.

    Keeps the IoU threshold the export uses (:func:`exportable_detector` with no override).
    """
    family = family_of(model)
    if family == "cornernet":
        if model.soft_nms_enabled:
            model.soft_nms_method = "hard"
    elif getattr(model, "nms_type", "hard") != "hard":
        model.nms_type = "hard"
        if not isinstance(model, EfficientDet):  # RetinaNetPlus' hard path is RetinaNet's own
            model.test_nms_thresh = model.nms_iou_threshold
    return model
