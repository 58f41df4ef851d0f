"""Box-regression losses.

* :func:`huber_loss` -- EfficientDet's box loss (`EfficientDet <https://arxiv.org/abs/1911.09070>`_):
  Huber with ``delta = 0.1`` on the encoded box deltas; the caller multiplies the result by
  the box-loss weight (50 in the paper's configs).
* :func:`smooth_l1_loss` -- Fast R-CNN's smooth L1 (``huber / beta``), with ``beta = 0``
  meaning plain L1.

Both are written as ``0.5 * q^2 + delta * (|d| - q)`` with ``q = min(|d|, delta)``, which is
the Huber function without a branch and has the right (sub)gradients everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

from plugins.core._validate import check_choice, check_positive, check_tensor

__all__ = ["huber_loss", "smooth_l1_loss"]

_REDUCTIONS = ("none", "mean", "sum")


def _check_pair(input: Tensor, target: Tensor, weight: Tensor | None) -> None:
    check_tensor("input", input, floating=True)
    check_tensor("target", target, floating=True)
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(
            f"target: expected shape {tuple(input.shape)} (same as input), "
            f"got {tuple(target.shape)}"
        )
    if weight is not None:
        check_tensor("weight", weight)
        try:
            out = torch.broadcast_shapes(weight.shape, input.shape)
        except RuntimeError:
            out = None
        if out is None or tuple(out) != tuple(input.shape):
            raise ValueError(
                f"weight: expected a shape broadcastable to {tuple(input.shape)}, "
                f"got {tuple(weight.shape)}"
            )


def _reduce(loss: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    if weight is not None:
        loss = loss * weight
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss


def huber_loss(
    input: Tensor,
    target: Tensor,
    delta: float = 0.1,
    reduction: str = "none",
    *,
    weight: Tensor | None = None,
) -> Tensor:
    """Huber loss ``0.5 d^2`` for ``|d| <= delta``, ``delta (|d| - 0.5 delta)`` beyond.

    Same values as ``torch.nn.functional.huber_loss(input, target, delta=delta)``;
    EfficientDet uses ``delta = 0.1`` and scales the (normalised) result by 50.

    Args:
        input: predictions, any shape ``(*)``, e.g. box deltas ``(B, A, 4)``.
        target: same shape as ``input``.
        delta: switch point between the quadratic and linear parts, ``> 0``. Default 0.1.
        reduction: ``"none"`` (shape ``(*)``), ``"mean"`` (mean over all elements of the
            weighted loss) or ``"sum"``. Default ``"none"``.
        weight: optional elementwise weight broadcastable to ``(*)`` (e.g. a positive-anchor
            mask ``(B, A, 1)``), applied before the reduction. Default ``None``.

    Returns:
        Tensor: ``(*)`` for ``"none"``, else a scalar.

    Raises:
        ValueError: bad tensors, shapes, ``delta <= 0`` or unknown ``reduction``.
    """
    _check_pair(input, target, weight)
    check_positive("delta", delta)
    check_choice("reduction", reduction, _REDUCTIONS)
    abs_err = (input - target).abs()
    quad = abs_err.clamp(max=delta)
    loss = 0.5 * quad * quad + delta * (abs_err - quad)
    return _reduce(loss, weight, reduction)


def smooth_l1_loss(
    input: Tensor,
    target: Tensor,
    beta: float = 0.1,
    reduction: str = "none",
    *,
    weight: Tensor | None = None,
) -> Tensor:
    """Smooth L1 loss ``0.5 d^2 / beta`` for ``|d| < beta``, ``|d| - 0.5 beta`` beyond.

    Same values as ``torch.nn.functional.smooth_l1_loss(input, target, beta=beta)`` and
    ``fvcore.nn.smooth_l1_loss``; ``beta = 0`` gives the L1 loss.

    Args:
        input: predictions, any shape ``(*)``.
        target: same shape as ``input``.
        beta: width of the quadratic zone, ``>= 0``. Default 0.1.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default ``"none"``.
        weight: optional elementwise weight broadcastable to ``(*)``. Default ``None``.

    Returns:
        Tensor: ``(*)`` for ``"none"``, else a scalar.

    Raises:
        ValueError: bad tensors, shapes, ``beta < 0`` or unknown ``reduction``.
    """
    _check_pair(input, target, weight)
    check_positive("beta", beta, allow_zero=True)
    check_choice("reduction", reduction, _REDUCTIONS)
    abs_err = (input - target).abs()
    if beta == 0.0:
        loss = abs_err
    else:
        quad = abs_err.clamp(max=beta)
        loss = (0.5 / beta) * quad * quad + (abs_err - quad)
    return _reduce(loss, weight, reduction)
