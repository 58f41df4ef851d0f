"""The core focal-loss family and box losses as MMDetection losses.

Every class follows mmdet's loss protocol: constructor arguments ``reduction`` and
``loss_weight``, and ``forward(pred, target, weight=None, avg_factor=None,
reduction_override=None)``. The elementwise math is :mod:`plugins.core.focal_loss` and
:mod:`plugins.core.box_loss`; weighting and reduction go through mmdet's own
``weight_reduce_loss`` so that ``avg_factor`` behaves exactly as in mmdet's losses.

Registered in ``mmdet.registry.MODELS``:

* ``PluginsFocalLoss`` -- sigmoid focal loss (RetinaNet, EfficientDet).
* ``PluginsAlphaBalancedBCELoss`` -- the ``gamma = 0`` case.
* ``PluginsGaussianFocalLoss`` -- CornerNet's heatmap loss.
* ``PluginsHuberLoss`` -- EfficientDet's box loss (``delta = 0.1``, weight 50).
* ``PluginsSmoothL1Loss`` -- Fast R-CNN's smooth L1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from torch import Tensor, nn

from plugins.core._validate import check_choice, check_positive, check_tensor
from plugins.core.box_loss import huber_loss, smooth_l1_loss
from plugins.core.focal_loss import gaussian_focal_loss, sigmoid_focal_loss

__all__ = [
    "PluginsFocalLoss",
    "PluginsAlphaBalancedBCELoss",
    "PluginsGaussianFocalLoss",
    "PluginsHuberLoss",
    "PluginsSmoothL1Loss",
    "labels_to_one_hot",
]

_REDUCTIONS = ("none", "mean", "sum")


def labels_to_one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """Turn mmdet's integer labels into a one-hot target without a background column.

    mmdet labels background anchors with ``num_classes`` (one past the last class); their
    one-hot row is all zeros.

    Args:
        labels: ``Tensor[N]`` integer class ids in ``[0, num_classes]``.
        num_classes: number of foreground classes ``C``.
        dtype: dtype of the result.

    Returns:
        ``Tensor[N, C]`` of zeros and ones.

    Raises:
        ValueError: ``labels`` is not a 1-D integer tensor or holds ids outside
            ``[0, num_classes]``.
    """
    check_tensor("target", labels, (None,), floating=False)
    if labels.numel() and (labels.min() < 0 or labels.max() > num_classes):
        raise ValueError(
            f"target: expected class ids in [0, {num_classes}] ({num_classes} = background), "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    return F.one_hot(labels.long(), num_classes + 1)[:, :num_classes].to(dtype)


def _expand_weight(weight: Tensor | None, loss: Tensor) -> Tensor | None:
    """Broadcast a per-row weight ``(N,)`` (or a flat per-element one) to ``loss``'s shape."""
    if weight is None or weight.shape == loss.shape:
        return weight
    if loss.dim() == 2 and weight.dim() == 1 and weight.numel() == loss.shape[0]:
        return weight.view(-1, 1)
    if weight.numel() == loss.numel():
        return weight.reshape(loss.shape)
    raise ValueError(
        f"weight: expected shape {tuple(loss.shape)} or ({loss.shape[0]},), "
        f"got {tuple(weight.shape)}"
    )


def _resolve_reduction(default: str, override: str | None) -> str:
    if override is not None:
        check_choice("reduction_override", override, _REDUCTIONS)
        return override
    return default


class _PluginsLoss(nn.Module):
    """Shared ``reduction`` / ``loss_weight`` handling of the losses below."""

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        check_choice("reduction", reduction, _REDUCTIONS)
        self.reduction = reduction
        self.loss_weight = float(loss_weight)

    def _finish(
        self,
        loss: Tensor,
        weight: Tensor | None,
        avg_factor: float | Tensor | None,
        reduction_override: str | None,
    ) -> Tensor:
        reduction = _resolve_reduction(self.reduction, reduction_override)
        weight = _expand_weight(weight, loss)
        if weight is not None:
            weight = weight.to(loss.dtype)
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)


@MODELS.register_module()
class PluginsFocalLoss(_PluginsLoss):
    """Sigmoid focal loss (:func:`plugins.core.focal_loss.sigmoid_focal_loss`) for mmdet heads.

    Paper: `Focal Loss for Dense Object Detection <https://arxiv.org/abs/1708.02002>`_.

    Accepts mmdet's two target conventions: integer labels ``Tensor[N]`` with ``num_classes``
    meaning background (as ``mmdet.models.losses.FocalLoss``), or a float one-hot /
    soft target of the same shape as ``pred``.

    Args:
        use_sigmoid: must be ``True`` (kept so that mmdet heads see a sigmoid classifier and
            use ``num_classes`` output channels). Default ``True``.
        gamma: focusing exponent. Default 2.0.
        alpha: weight of positives; ``< 0`` disables balancing. Default 0.25.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default ``"mean"``.
        loss_weight: multiplier of the result. Default 1.0.

    Raises:
        ValueError: ``use_sigmoid`` false, negative ``gamma`` or unknown ``reduction``.
    """

    def __init__(
        self,
        use_sigmoid: bool = True,
        gamma: float = 2.0,
        alpha: float = 0.25,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(reduction, loss_weight)
        if not use_sigmoid:
            raise ValueError("use_sigmoid: only the sigmoid focal loss exists, got False")
        check_positive("gamma", gamma, allow_zero=True)
        self.use_sigmoid = True
        self.gamma = float(gamma)
        self.alpha = float(alpha)

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        """Compute the loss.

        Args:
            pred: logits ``Tensor[N, C]``.
            target: ``Tensor[N]`` integer labels (``C`` = background) or ``Tensor[N, C]``.
            weight: ``Tensor[N]`` per-prediction or ``Tensor[N, C]`` weights. Default ``None``.
            avg_factor: divisor of the summed loss for ``"mean"``. Default ``None``.
            reduction_override: replaces ``reduction`` for this call. Default ``None``.

        Returns:
            Tensor: scalar, or ``Tensor[N, C]`` with reduction ``"none"``.
        """
        check_tensor("pred", pred, floating=True)
        if target.dim() == pred.dim() - 1:
            target = labels_to_one_hot(target, pred.shape[-1], pred.dtype)
        loss = sigmoid_focal_loss(pred, target, alpha=self.alpha, gamma=self.gamma)
        return self._finish(loss, weight, avg_factor, reduction_override)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, reduction={self.reduction!r}"


@MODELS.register_module()
class PluginsAlphaBalancedBCELoss(PluginsFocalLoss):
    """Alpha-balanced binary cross-entropy: :class:`PluginsFocalLoss` with ``gamma = 0``.

    Paper: `Focal Loss for Dense Object Detection <https://arxiv.org/abs/1708.02002>`_ (Sec. 3.1).

    Args:
        use_sigmoid: must be ``True``. Default ``True``.
        alpha: weight of positives; ``< 0`` gives the plain BCE. Default 0.25.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default ``"mean"``.
        loss_weight: multiplier of the result. Default 1.0.
    """

    def __init__(
        self,
        use_sigmoid: bool = True,
        alpha: float = 0.25,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(use_sigmoid, 0.0, alpha, reduction, loss_weight)


@MODELS.register_module()
class PluginsGaussianFocalLoss(_PluginsLoss):
    """CornerNet's penalty-reduced focal loss on heatmaps (:func:`gaussian_focal_loss`).

    Paper: `CornerNet <https://arxiv.org/abs/1808.01244>`_. Same arguments and values as
    ``mmdet.models.losses.GaussianFocalLoss`` (``gamma`` is the paper's beta).

    Args:
        alpha: exponent on the prediction term. Default 2.0.
        gamma: exponent of ``(1 - target)`` for negatives. Default 4.0.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default ``"mean"``.
        loss_weight: multiplier of the result. Default 1.0.
        pos_weight: weight of the positive term. Default 1.0.
        neg_weight: weight of the negative term. Default 1.0.
    """

    def __init__(
        self,
        alpha: float = 2.0,
        gamma: float = 4.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        pos_weight: float = 1.0,
        neg_weight: float = 1.0,
    ) -> None:
        super().__init__(reduction, loss_weight)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.pos_weight = float(pos_weight)
        self.neg_weight = float(neg_weight)

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        """Compute the loss.

        Args:
            pred: probabilities (sigmoid-ed) of any shape ``(*)``, e.g. ``(B, C, H, W)``.
            target: Gaussian heatmap of the same shape, 1 at object centres/corners.
            weight: elementwise weights broadcastable to ``(*)``. Default ``None``.
            avg_factor: divisor of the summed loss for ``"mean"`` (CornerNet: number of
                positives). Default ``None``.
            reduction_override: replaces ``reduction`` for this call. Default ``None``.

        Returns:
            Tensor: scalar, or ``(*)`` with reduction ``"none"``.
        """
        loss = gaussian_focal_loss(
            pred,
            target,
            alpha=self.alpha,
            beta=self.gamma,
            pos_weight=self.pos_weight,
            neg_weight=self.neg_weight,
        )
        return self._finish(loss, weight, avg_factor, reduction_override)


@MODELS.register_module()
class PluginsHuberLoss(_PluginsLoss):
    """Huber loss on box regression codes (:func:`plugins.core.box_loss.huber_loss`).

    Paper: `EfficientDet <https://arxiv.org/abs/1911.09070>`_ uses ``delta = 0.1`` and a box
    loss weight of 50, normalised by ``4 * num_positive_anchors``.

    Args:
        delta: switch point between the quadratic and the linear part. Default 0.1.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default ``"mean"``.
        loss_weight: multiplier of the result. Default 1.0.
    """

    def __init__(self, delta: float = 0.1, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__(reduction, loss_weight)
        check_positive("delta", delta)
        self.delta = float(delta)

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        """Compute the loss of ``pred`` ``Tensor[N, 4]`` against ``target`` (same shape).

        Args:
            pred: predicted codes ``Tensor[N, 4]`` (any shape works).
            target: target codes, same shape.
            weight: elementwise weights, same shape or ``Tensor[N]``. Default ``None``.
            avg_factor: divisor of the summed loss for ``"mean"``. Default ``None``.
            reduction_override: replaces ``reduction`` for this call. Default ``None``.

        Returns:
            Tensor: scalar, or ``Tensor[N, 4]`` with reduction ``"none"``.
        """
        loss = huber_loss(pred, target, delta=self.delta)
        return self._finish(loss, weight, avg_factor, reduction_override)


@MODELS.register_module()
class PluginsSmoothL1Loss(_PluginsLoss):
    """Smooth L1 loss (:func:`plugins.core.box_loss.smooth_l1_loss`).

    Paper: `Fast R-CNN <https://arxiv.org/abs/1504.08083>`_.

    Args:
        beta: width of the quadratic zone (0 gives L1). Default 0.1.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default ``"mean"``.
        loss_weight: multiplier of the result. Default 1.0.
    """

    def __init__(self, beta: float = 0.1, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__(reduction, loss_weight)
        check_positive("beta", beta, allow_zero=True)
        self.beta = float(beta)

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        """Compute the loss of ``pred`` ``Tensor[N, 4]`` against ``target`` (same shape).

        Args:
            pred: predictions ``Tensor[N, 4]`` (any shape works).
            target: targets, same shape.
            weight: elementwise weights, same shape or ``Tensor[N]``. Default ``None``.
            avg_factor: divisor of the summed loss for ``"mean"``. Default ``None``.
            reduction_override: replaces ``reduction`` for this call. Default ``None``.

        Returns:
            Tensor: scalar, or ``Tensor[N, 4]`` with reduction ``"none"``.
        """
        loss = smooth_l1_loss(pred, target, beta=self.beta)
        return self._finish(loss, weight, avg_factor, reduction_override)
