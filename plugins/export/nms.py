"""Per-class hard NMS as a static-shape PyTorch op that exports to ONNX ``NonMaxSuppression``.

:func:`class_nms` takes padded candidates ``(B, N)`` and returns a keep mask of the same shape,
so nothing after it has a data-dependent size: the export traces, and the graph feeds a
fixed-size top-k. It is registered as the custom op ``plugins_export::class_nms``:

* eagerly it runs ``torchvision.ops.nms`` once per image and class;
* in ``torch.onnx.export(..., dynamo=True)`` :data:`ONNX_TRANSLATIONS` maps it to one
  ``NonMaxSuppression`` (opset 11 semantics) with the classes on the operator's class axis,
  followed by a ``ScatterND`` that turns the selected indices into the mask.

Both sides suppress a box when its IoU with a kept box of the same class is ``> iou_threshold``
(torchvision, mmcv and onnxruntime agree on this and on the float IoU formula) and rank boxes
by score. Candidates with a negative score are padding: they are never kept.

Soft-NMS (linear or Gaussian score decay) has no ONNX operator; exported graphs use this hard
NMS instead (see :mod:`plugins.export.detector`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["class_nms", "ONNX_TRANSLATIONS", "PADDING_SCORE"]

PADDING_SCORE = -1.0
"""Score that marks a padded (invalid) candidate; real scores are probabilities >= 0."""

_SCORE_FLOOR = -0.5  # NonMaxSuppression's score_threshold: keeps scores > -0.5, i.e. all real ones


@torch.library.custom_op("plugins_export::class_nms", mutates_args=())
def class_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    num_classes: int,
    iou_threshold: float,
    max_per_class: int,
) -> Tensor:
    """Greedy hard NMS per image and class, as a keep mask.

    Args:
        boxes: ``(B, N, 4)`` float ``(x1, y1, x2, y2)``.
        scores: ``(B, N)`` float; ``< 0`` marks padding (never kept).
        labels: ``(B, N)`` int64 class ids in ``[0, num_classes)``.
        num_classes: number of classes.
        iou_threshold: a box is suppressed by a kept box of its class with IoU ``>`` this.
        max_per_class: at most this many boxes kept per image and class (the best ones).

    Returns:
        ``(B, N)`` bool, ``True`` for kept candidates.
    """
    from torchvision.ops import nms

    keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    for b in range(scores.shape[0]):
        real = scores[b] > _SCORE_FLOOR
        for c in torch.unique(labels[b][real]).tolist():
            idx = torch.nonzero(real & (labels[b] == c)).flatten()
            kept = nms(boxes[b, idx], scores[b, idx], float(iou_threshold))[:max_per_class]
            keep[b, idx[kept]] = True
    return keep


@class_nms.register_fake
def _class_nms_fake(boxes, scores, labels, num_classes, iou_threshold, max_per_class):
    return scores.new_empty(scores.shape, dtype=torch.bool)


def _class_nms_onnx(
    boxes,
    scores,
    labels,
    num_classes: int,
    iou_threshold: float,
    max_per_class: int,
):
    """ONNX graph of :func:`class_nms` (onnxscript, trace-only, opset 18)."""
    import onnx_ir as ir
    from onnxscript import opset18 as op

    classes = op.Constant(value=ir.tensor(list(range(num_classes)), dtype=ir.DataType.INT64))
    classes = op.Reshape(classes, op.Constant(value_ints=[1, num_classes, 1]))
    per_class = op.Equal(op.Unsqueeze(labels, op.Constant(value_ints=[1])), classes)  # (B, C, N)
    padding = op.Constant(value=ir.tensor([PADDING_SCORE], dtype=ir.DataType.FLOAT))
    class_scores = op.Where(per_class, op.Unsqueeze(scores, op.Constant(value_ints=[1])), padding)
    selected = op.NonMaxSuppression(
        boxes,
        class_scores,
        op.Constant(value=ir.tensor([max_per_class], dtype=ir.DataType.INT64)),
        op.Constant(value=ir.tensor([iou_threshold], dtype=ir.DataType.FLOAT)),
        op.Constant(value=ir.tensor([_SCORE_FLOOR], dtype=ir.DataType.FLOAT)),
    )  # (M, 3): batch, class, box
    where = op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)  # (M, 2)
    count = op.Shape(selected, start=0, end=1)
    ones = op.ConstantOfShape(count, value=ir.tensor([1], dtype=ir.DataType.INT64))
    zeros = op.ConstantOfShape(op.Shape(scores), value=ir.tensor([0], dtype=ir.DataType.INT64))
    mask = op.ScatterND(zeros, where, ones)
    return op.Cast(mask, to=ir.DataType.BOOL)


ONNX_TRANSLATIONS = {torch.ops.plugins_export.class_nms.default: _class_nms_onnx}
"""``custom_translation_table`` entries for ``torch.onnx.export(..., dynamo=True)``."""
