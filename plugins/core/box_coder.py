"""Anchor-relative box coding used by EfficientDet (the Faster R-CNN parameterisation).

Paper: Faster R-CNN, Ren et al. 2015, https://arxiv.org/abs/1506.01497 (equation 2); EfficientDet,
https://arxiv.org/abs/1911.09070, regresses the same ``(ty, tx, th, tw)`` codes, unscaled.

For an anchor with centre ``(xa, ya)`` and size ``(wa, ha)`` and a box with centre ``(x, y)`` and
size ``(w, h)``: ``ty = (y - ya) / ha``, ``tx = (x - xa) / wa``, ``th = log(h / ha)``,
``tw = log(w / wa)``. Boxes are ``(x1, y1, x2, y2)``; codes keep EfficientDet's
``(ty, tx, th, tw)`` order so that they line up with its box-head channels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from plugins.core._validate import check_tensor


def _centers(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return (y1 + y2) / 2, (x1 + x2) / 2, y2 - y1, x2 - x1


def encode_boxes(boxes: Tensor, anchors: Tensor, eps: float = 1e-7) -> Tensor:
    """Encode boxes relative to their anchors.

    Args:
        boxes: ``Tensor[..., 4]`` target boxes ``(x1, y1, x2, y2)``.
        anchors: ``Tensor[..., 4]`` anchors ``(x1, y1, x2, y2)``, broadcastable to ``boxes``.
        eps: added to every width and height before dividing / taking logs. Default 1e-7.

    Returns:
        ``Tensor[..., 4]`` codes ``(ty, tx, th, tw)``.

    Raises:
        ValueError: a last dimension other than 4 or a non-float tensor.
    """
    check_tensor("boxes", boxes, None, floating=True)
    check_tensor("anchors", anchors, None, floating=True)
    for name, t in (("boxes", boxes), ("anchors", anchors)):
        if t.dim() == 0 or t.shape[-1] != 4:
            raise ValueError(f"{name}: expected shape (..., 4), got {tuple(t.shape)}")
    ya, xa, ha, wa = _centers(anchors)
    y, x, h, w = _centers(boxes)
    ha, wa, h, w = ha + eps, wa + eps, h + eps, w + eps
    return torch.stack(((y - ya) / ha, (x - xa) / wa, torch.log(h / ha), torch.log(w / wa)), -1)


def decode_boxes(codes: Tensor, anchors: Tensor) -> Tensor:
    """Decode ``(ty, tx, th, tw)`` regression outputs into boxes.

    Args:
        codes: ``Tensor[..., 4]`` codes ``(ty, tx, th, tw)`` (e.g. ``(N, 4)`` or ``(B, N, 4)``).
        anchors: ``Tensor[..., 4]`` anchors ``(x1, y1, x2, y2)``, broadcastable to ``codes``.

    Returns:
        ``Tensor[..., 4]`` boxes ``(x1, y1, x2, y2)`` with the broadcast shape.

    Raises:
        ValueError: a last dimension other than 4 or a non-float tensor.
    """
    check_tensor("codes", codes, None, floating=True)
    check_tensor("anchors", anchors, None, floating=True)
    for name, t in (("codes", codes), ("anchors", anchors)):
        if t.dim() == 0 or t.shape[-1] != 4:
            raise ValueError(f"{name}: expected shape (..., 4), got {tuple(t.shape)}")
    ya, xa, ha, wa = _centers(anchors)
    ty, tx, th, tw = codes.unbind(-1)
    w = torch.exp(tw) * wa
    h = torch.exp(th) * ha
    y = ty * ha + ya
    x = tx * wa + xa
    return torch.stack((x - w / 2, y - h / 2, x + w / 2, y + h / 2), -1)


__all__ = ["encode_boxes", "decode_boxes"]
