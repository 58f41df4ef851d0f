"""MMDetection models -> :class:`plugins.export.detector.ExportableDetector` (ONNX export).

Translates a built MMDetection model of ours (``PluginsEfficientDet``, ``RetinaNet`` with
``RetinaHead`` / ``PluginsRetinaHead``, ``CornerNet`` with ``PluginsCornerHead``) into the
framework-free exportable module: the same network modules (shared, not copied), the head's
anchors at the fixed input size, its box coder, and the ``test_cfg`` post-processing step by
step (``BaseDenseHead._predict_by_feat_single`` / ``_bbox_post_process``, and
``PluginsCornerHead.predict_by_feat``), see :mod:`plugins.export.detector`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from plugins.export.detector import (
    AnchorDecoder,
    CornerDecoder,
    ExportableDetector,
    Selection,
    check_input_size,
    corner_head_last_level,
    efficientdet_box_decoder,
)

from .cornernet import CORNERNET_TEST_CFG, PluginsCornerHead
from .efficientdet import PluginsEfficientDetBoxCoder
from .soft_nms import is_plugins_soft_nms

__all__ = [
    "MMCV_SPLIT_THR",
    "exportable_detector",
    "family_of",
    "hard_nms_twin",
    "size_divisibility",
]

MMCV_SPLIT_THR = 10000
"""``mmcv.ops.batched_nms`` default ``split_thr``: fewer boxes are shifted by class."""

_TORCHVISION_SHIFT_LIMIT = 1000  # the core's hard NMS calls torchvision's batched_nms


def family_of(model: nn.Module) -> str:
    """``"efficientdet"``, ``"retinanet"`` (any sigmoid anchor head) or ``"cornernet"``.

    Raises:
        ValueError: a head the export does not handle.
    """
    head = getattr(model, "bbox_head", None)
    if isinstance(head, PluginsCornerHead):
        return "cornernet"
    if head is not None and hasattr(head, "prior_generator") and hasattr(head, "bbox_coder"):
        if not getattr(head, "use_sigmoid_cls", False):
            raise ValueError("model.bbox_head: export needs a sigmoid classifier (use_sigmoid)")
        return "efficientdet" if type(head).__name__ == "PluginsEfficientDetHead" else "retinanet"
    raise ValueError(
        "model.bbox_head: export handles PluginsEfficientDetHead, RetinaHead / "
        f"PluginsRetinaHead and PluginsCornerHead, got {type(head).__name__}"
    )


def size_divisibility(model: nn.Module) -> int:
    """The data preprocessor pads to multiples of this; an exported size must be one."""
    return max(int(getattr(model.data_preprocessor, "pad_size_divisor", 1)), 1)


class _Network(nn.Module):
    """``images -> raw head outputs``: ``extract_feat`` then ``bbox_head``."""

    def __init__(self, model: nn.Module, corner: bool) -> None:
        super().__init__()
        self.model = model
        self.corner = corner

    def forward(self, images: Tensor):
        feats = self.model.extract_feat(images)
        if self.corner:
            return corner_head_last_level(self.model.bbox_head.net, feats[-1])
        return self.model.bbox_head(feats)


def _test_cfg(head: nn.Module) -> Mapping:
    return head.test_cfg if head.test_cfg is not None else {}


def _nms_settings(nms_cfg: Mapping | None, override: float | None) -> dict:
    """``Selection`` NMS fields for an mmdet ``nms`` config, and what it runs."""
    if nms_cfg is None:
        return {"nms_iou_threshold": None, "model_nms": "none"}
    if nms_cfg.get("class_agnostic", False):
        raise ValueError("test_cfg.nms.class_agnostic: the export runs class-wise NMS only")
    iou = nms_cfg.get("iou_threshold", nms_cfg.get("iou_thr", 0.3))
    if is_plugins_soft_nms(nms_cfg):
        method = nms_cfg.get("method", "gaussian")
        out = {"model_nms": method}
        if method == "hard":  # the core's hard NMS: torchvision after a minimum score
            out.update(
                shift_limit=_TORCHVISION_SHIFT_LIMIT,
                nms_min_score=nms_cfg.get("min_score", nms_cfg.get("score_threshold", 1e-3)),
            )
        else:
            out["shift_limit"] = MMCV_SPLIT_THR - 1
    else:
        kind = nms_cfg.get("type", "nms")
        out = {"model_nms": "hard" if kind == "nms" else kind}
        out["shift_limit"] = int(nms_cfg.get("split_thr", MMCV_SPLIT_THR)) - 1
    out["nms_iou_threshold"] = float(override if override is not None else iou)
    return out


def exportable_detector(
    model: nn.Module,
    input_size: tuple[int, int],
    nms_iou_threshold: float | None = None,
    input_dtype: str = "uint8",
) -> tuple[ExportableDetector, dict]:
    """The exportable module of an MMDetection model, at ``input_size``.

    Args:
        model: a built model of ours (weights loaded); it is used on CPU.
        input_size: ``(H, W)``, multiples of :func:`size_divisibility`.
        nms_iou_threshold: IoU threshold of the exported hard NMS; ``None`` takes
            ``test_cfg.nms``'s (``iou_threshold``; 0.3, the core default, for a soft-NMS config
            without one). Default ``None``.
        input_dtype: ``"uint8"`` or ``"float32"``. Default ``"uint8"``.

    Returns:
        ``(detector, info)`` as :func:`plugins.d2.export.exportable_detector`.

    Raises:
        ValueError: unsupported model or settings, or an input size the model cannot take.
    """
    family = family_of(model)
    model = model.eval().cpu()
    h, w = check_input_size(
        input_size, size_divisibility(model), "data_preprocessor.pad_size_divisor"
    )
    head = model.bbox_head
    cfg = _test_cfg(head)
    if family == "cornernet":

        def setting(key: str):
            return cfg.get(key, CORNERNET_TEST_CFG[key])

        nms = _nms_settings(setting("nms"), nms_iou_threshold)
        network = _Network(model, corner=True)
        decoder = CornerDecoder(
            (h, w),
            k=int(setting("corner_topk")),
            kernel=int(setting("local_maximum_kernel")),
            distance_threshold=float(setting("distance_threshold")),
            num_dets=int(setting("num_dets")),
            score_threshold=float(setting("score_thr")),
        )
        max_det = setting("max_per_img")
        extra = dict(clip_before_nms=(h, w), min_box_size=0.0)
    else:
        nms = _nms_settings(cfg.get("nms"), nms_iou_threshold)
        network = _Network(model, corner=False)
        with torch.no_grad():
            maps = network(torch.zeros(1, 3, h, w))[0]
        featmap_sizes = [tuple(int(s) for s in m.shape[-2:]) for m in maps]
        anchors = torch.cat(head.prior_generator.grid_priors(featmap_sizes, device="cpu"))
        coder = head.bbox_coder
        if isinstance(coder, PluginsEfficientDetBoxCoder):  # the same math, core code
            decode = efficientdet_box_decoder(
                coder.max_log_ratio, (h, w) if coder.clip_border else None
            )
        else:

            def decode(codes: Tensor, anchors: Tensor) -> Tensor:
                flat = coder.decode(anchors.reshape(-1, 4), codes.reshape(-1, 4), max_shape=(h, w))
                return flat.reshape(codes.shape)

        nms_pre = int(cfg.get("nms_pre", -1))
        decoder = AnchorDecoder(
            anchors,
            [a * b for a, b in featmap_sizes],
            head.num_base_priors,
            head.cls_out_channels,
            nms_pre if nms_pre > 0 else anchors.shape[0] * head.cls_out_channels,
            float(cfg.get("score_thr", 0.0)),
            decode,
        )
        max_det = cfg.get("max_per_img", 100)
        min_size = cfg.get("min_bbox_size", -1)
        extra = dict(min_box_size=float(min_size) if min_size >= 0 else None)
    model_nms = nms.pop("model_nms")
    if max_det is None or max_det < 0:
        raise ValueError(f"test_cfg.max_per_img: the export needs a fixed count, got {max_det}")
    selection = Selection(num_classes=head.num_classes, max_detections=int(max_det), **nms, **extra)
    pre = model.data_preprocessor
    detector = ExportableDetector(
        network,
        decoder,
        selection,
        (h, w),
        pre.mean.flatten().tolist(),
        pre.std.flatten().tolist(),
        # mmcv loads BGR; the preprocessor flips it to RGB when asked
        network_channels="RGB" if getattr(pre, "_channel_conversion", False) else "BGR",
        input_dtype=input_dtype,
    )
    info = {
        "family": family,
        "model_nms": model_nms,
        "nms_iou_threshold": selection.nms_iou_threshold,
    }
    return detector, info


def hard_nms_twin(model: nn.Module) -> nn.Module:
    """Switch a model's ``test_cfg.nms`` to mmcv's hard NMS in place when it is soft-NMS
    (what the export runs, same IoU threshold); returns the model."""
    head = model.bbox_head
    cfg = _test_cfg(head)
    nms_cfg = (
        cfg.get("nms")
        if family_of(model) != "cornernet"
        else cfg.get("nms", CORNERNET_TEST_CFG["nms"])
    )
    if nms_cfg is None:
        return model
    soft = is_plugins_soft_nms(nms_cfg) and nms_cfg.get("method", "gaussian") != "hard"
    if soft or nms_cfg.get("type") == "soft_nms":
        iou = nms_cfg.get("iou_threshold", nms_cfg.get("iou_thr", 0.3))
        new_cfg = copy.deepcopy(dict(cfg))
        new_cfg["nms"] = dict(type="nms", iou_threshold=iou)
        head.test_cfg = type(head.test_cfg)(new_cfg) if head.test_cfg is not None else new_cfg
        model.test_cfg = head.test_cfg
    return model
