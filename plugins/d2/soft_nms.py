"""Soft-NMS in Detectron2's own detectors: one config switch, ``MODEL.NMS.TYPE``.

With ``MODEL.NMS.TYPE: gaussian`` (or ``linear``) Detectron2's standard meta-architectures run
the core soft-NMS (:func:`plugins.core.soft_nms.batched_soft_nms`) at test time instead of
hard NMS: Faster / Mask R-CNN (``StandardROIHeads`` and ``Res5ROIHeads``) and Cascade R-CNN
(its final NMS after the last stage) through ``FastRCNNOutputLayers``, and ``RetinaNet``. Masks,
keypoints and every later step use the kept boxes, as they do after hard NMS. RPN proposals stay
on hard NMS unless ``MODEL.NMS.APPLY_TO_RPN: True`` (soft-NMS on the objectness probabilities
at test time; training always uses hard NMS there). ``"hard"`` (the default) changes nothing.
The other keys of ``MODEL.NMS`` (``SIGMA``, ``IOU_THRESHOLD`` for ``linear``,
``SCORE_THRESHOLD``, ``MAX_DETECTIONS``) are shared with ``EfficientDet`` and ``RetinaNetPlus``;
each detector keeps its own ``TEST.DETECTIONS_PER_IMAGE`` cut after the NMS.

How (no Detectron2 code is copied): Detectron2's modules keep their NMS threshold in an
attribute (``test_nms_thresh``, the RPN's ``nms_thresh``) and pass it to ``batched_nms``.

* The ``from_config`` of ``FastRCNNOutputLayers``, ``RetinaNet`` and ``RPN`` (and so of their
  subclasses) is wrapped on import of :mod:`plugins.d2`: when ``MODEL.NMS.TYPE`` is not
  ``"hard"``, the threshold they return is a :class:`SoftNMSThreshold`, a ``float`` (equal to
  the configured hard threshold, so any code that reads the number still works) carrying the
  soft-NMS settings.
* ``batched_nms`` in the Detectron2 modules that call it for these detectors
  (``roi_heads.fast_rcnn``, ``meta_arch.retinanet``, ``meta_arch.fcos``,
  ``proposal_generator.proposal_utils``) is replaced, the first time a
  :class:`SoftNMSThreshold` is made, by a function that sends a :class:`SoftNMSThreshold` to the
  core and any other threshold, unchanged, to Detectron2's ``batched_nms``. The decayed scores
  are written into the ``scores`` tensor the caller passed, at the kept positions: each of
  those callers reads its output scores as ``scores[keep]`` right after the call.

Detectron2's FCOS (built from a LazyConfig, no ``from_config``) takes the same object directly:
``model.test_nms_thresh = SoftNMSThreshold(0.6, method="gaussian")``; :func:`enable_soft_nms`
does this for any built model. Not covered: test-time augmentation's box merging (it reads
``ROI_HEADS.NMS_THRESH_TEST`` itself), rotated boxes, and TorchScript scripting of a model with
soft-NMS switched on (the replacement function is Python).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

import torch
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from torch import Tensor

from plugins.core._validate import check_choice, check_positive
from plugins.core.soft_nms import batched_soft_nms

__all__ = ["SoftNMSThreshold", "soft_nms_threshold_from_config", "enable_soft_nms"]

#: Values of ``MODEL.NMS.TYPE`` that switch the standard detectors to soft-NMS.
SOFT_TYPES = ("linear", "gaussian")

# Detectron2 modules whose ``batched_nms`` serves the detectors above.
_CALLER_MODULES = (
    "detectron2.modeling.roi_heads.fast_rcnn",
    "detectron2.modeling.meta_arch.retinanet",
    "detectron2.modeling.meta_arch.fcos",
    "detectron2.modeling.proposal_generator.proposal_utils",
)


class SoftNMSThreshold(float):
    """An NMS IoU threshold that asks Detectron2's ``batched_nms`` callers for soft-NMS.

    Its float value is the hard-NMS threshold it replaces (unused by soft-NMS).

    Args:
        value: the hard-NMS IoU threshold this object stands for.
        method: ``"gaussian"`` or ``"linear"``.
        sigma: Gaussian width. Default 0.5.
        iou_threshold: IoU from which ``"linear"`` decays. Default 0.3.
        score_threshold: boxes whose decayed score falls below it are dropped. Default 0.001.
        max_detections: keep at most this many per call (``< 0``: all; the caller cuts to its
            own ``topk`` anyway). Default -1.
        logits: the scores are logits (the RPN's objectness): soft-NMS runs on their sigmoid
            and the decayed probabilities are written back as logits. Default ``False``.
    """

    method: str
    sigma: float
    iou_threshold: float
    score_threshold: float
    max_detections: int
    logits: bool

    def __new__(
        cls,
        value: float,
        method: str = "gaussian",
        sigma: float = 0.5,
        iou_threshold: float = 0.3,
        score_threshold: float = 0.001,
        max_detections: int = -1,
        logits: bool = False,
    ) -> SoftNMSThreshold:
        check_choice("method", method, SOFT_TYPES)
        check_positive("sigma", sigma)
        check_positive("iou_threshold", iou_threshold, allow_zero=True)
        self = super().__new__(cls, value)
        self.method, self.sigma, self.iou_threshold = method, float(sigma), float(iou_threshold)
        self.score_threshold, self.max_detections = float(score_threshold), int(max_detections)
        self.logits = bool(logits)
        _install_dispatch()
        return self

    def _args(self) -> tuple:
        return (
            float(self), self.method, self.sigma, self.iou_threshold, self.score_threshold,
            self.max_detections, self.logits,
        )  # fmt: skip

    def __reduce__(self):  # pickle / deepcopy keep the settings
        return (type(self), self._args())

    def __repr__(self) -> str:
        return (
            f"SoftNMSThreshold({float(self)!r}, method={self.method!r}, sigma={self.sigma}, "
            f"iou_threshold={self.iou_threshold}, score_threshold={self.score_threshold}, "
            f"max_detections={self.max_detections}, logits={self.logits})"
        )

    def __call__(self, boxes: Tensor, scores: Tensor, idxs: Tensor) -> Tensor:
        """Soft-NMS in place of ``batched_nms(boxes, scores, idxs, threshold)``.

        Returns the kept indices (decayed score, descending) and writes the decayed scores
        into ``scores[keep]`` (see the module docstring).
        """
        probs = scores.sigmoid() if self.logits else scores
        keep, new = batched_soft_nms(
            boxes, probs, idxs, self.method, self.sigma, self.iou_threshold,
            self.score_threshold, self.max_detections,
        )  # fmt: skip
        with torch.no_grad():
            if self.logits:  # unchanged boxes keep their exact logit
                old = scores[keep]
                new = torch.where(new == probs[keep], old, torch.logit(new.to(old.dtype)))
            scores[keep] = new.to(scores.dtype)
        return keep


def soft_nms_threshold_from_config(
    cfg, hard_threshold: float, rpn: bool = False
) -> float | SoftNMSThreshold:
    """``hard_threshold``, or a :class:`SoftNMSThreshold` when ``cfg.MODEL.NMS`` asks for one.

    Args:
        cfg: a Detectron2 config; without the ``MODEL.NMS`` node (no :func:`add_plugins_config`)
            the threshold is returned unchanged.
        hard_threshold: the threshold the module's ``from_config`` chose.
        rpn: the caller is the RPN (soft only with ``MODEL.NMS.APPLY_TO_RPN``; logits).

    Raises:
        ValueError: ``MODEL.NMS.TYPE`` is not one of hard / linear / gaussian.
    """
    node = cfg.MODEL.get("NMS")
    if node is None:
        return hard_threshold
    check_choice("MODEL.NMS.TYPE", node.TYPE, ("hard",) + SOFT_TYPES)
    if node.TYPE == "hard" or (rpn and not node.get("APPLY_TO_RPN", False)):
        return hard_threshold
    return SoftNMSThreshold(
        hard_threshold,
        method=node.TYPE,
        sigma=node.SIGMA,
        iou_threshold=node.IOU_THRESHOLD,
        score_threshold=0.0 if rpn else node.SCORE_THRESHOLD,
        max_detections=-1 if rpn else node.MAX_DETECTIONS,
        logits=rpn,
    )


def enable_soft_nms(model: torch.nn.Module, apply_to_rpn: bool = False, **settings) -> int:
    """Switch a built Detectron2 model to soft-NMS (LazyConfig models, FCOS, ...).

    Replaces every ``test_nms_thresh`` attribute (ROI box predictors, RetinaNet, FCOS) and,
    with ``apply_to_rpn``, the RPN's ``nms_thresh`` by a :class:`SoftNMSThreshold`.

    Args:
        model: the model (any ``nn.Module``).
        apply_to_rpn: also the RPN's proposals. Default ``False``.
        **settings: :class:`SoftNMSThreshold` keyword arguments (``method``, ``sigma``, ...).

    Returns:
        The number of thresholds replaced.
    """
    count = 0
    for module in model.modules():
        for attr, rpn in (("test_nms_thresh", False), ("nms_thresh", True)):
            value = getattr(module, attr, None)
            if isinstance(value, float) and (not rpn or apply_to_rpn):
                kwargs = dict(settings, logits=True, score_threshold=0.0) if rpn else settings
                setattr(module, attr, SoftNMSThreshold(float(value), **kwargs))
                count += 1
    return count


# ------------------------------------------------------------------------------------------
# Hooks
# ------------------------------------------------------------------------------------------


def _dispatching(original: Callable) -> Callable:
    def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
        if isinstance(iou_threshold, SoftNMSThreshold):
            return iou_threshold(boxes, scores, idxs)
        return original(boxes, scores, idxs, iou_threshold)

    batched_nms.plugins_original = original  # type: ignore[attr-defined]
    return batched_nms


def _install_dispatch() -> None:
    """Replace ``batched_nms`` in the caller modules (idempotent)."""
    for name in _CALLER_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a Detectron2 version without this module (e.g. no FCOS)
            continue
        current = getattr(module, "batched_nms", None)
        if current is not None and not hasattr(current, "plugins_original"):
            module.batched_nms = _dispatching(current)
    rpn = importlib.import_module("detectron2.modeling.proposal_generator.rpn")
    if not hasattr(rpn.find_top_rpn_proposals, "plugins_original"):
        rpn.find_top_rpn_proposals = _hard_while_training(rpn.find_top_rpn_proposals)


def _hard_while_training(original: Callable) -> Callable:
    """``find_top_rpn_proposals`` that uses hard NMS for training proposals."""
    signature = inspect.signature(original)

    def find_top_rpn_proposals(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        thresh = bound.arguments["nms_thresh"]
        if bound.arguments["training"] and isinstance(thresh, SoftNMSThreshold):
            bound.arguments["nms_thresh"] = float(thresh)
        return original(*bound.args, **bound.kwargs)

    find_top_rpn_proposals.plugins_original = original  # type: ignore[attr-defined]
    return find_top_rpn_proposals


def _wrap_from_config(cls: type, key: str, rpn: bool = False) -> None:
    """Make ``cls.from_config`` return a :class:`SoftNMSThreshold` under ``key`` when the
    config asks for soft-NMS (idempotent)."""
    original = cls.__dict__["from_config"].__func__
    if hasattr(original, "plugins_original"):
        return

    def from_config(klass, cfg, *args, **kwargs):
        ret = original(klass, cfg, *args, **kwargs)
        if key in ret:
            ret[key] = soft_nms_threshold_from_config(cfg, ret[key], rpn=rpn)
        return ret

    from_config.__signature__ = inspect.signature(original)  # configurable reads the arguments
    from_config.__doc__ = original.__doc__
    from_config.plugins_original = original  # type: ignore[attr-defined]
    cls.from_config = classmethod(from_config)


_wrap_from_config(FastRCNNOutputLayers, "test_nms_thresh")
_wrap_from_config(RetinaNet, "test_nms_thresh")
_wrap_from_config(RPN, "nms_thresh", rpn=True)
