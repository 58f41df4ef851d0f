"""Focal-loss family for dense detectors.

* :func:`sigmoid_focal_loss` -- RetinaNet / EfficientDet classification loss
  (`Focal Loss for Dense Object Detection <https://arxiv.org/abs/1708.02002>`_), implemented
  as a ``torch.autograd.Function`` with a hand-derived gradient. It saves only ``inputs`` and
  ``targets`` for backward and recomputes everything else there, and it works through the
  tensors in flat chunks, so peak memory stays close to "inputs + targets + result" instead
  of the half-dozen full-size intermediates that autograd through the elementwise graph
  keeps alive.
* :func:`alpha_balanced_bce` -- the ``gamma = 0`` special case.
* :func:`gaussian_focal_loss` -- CornerNet's penalty-reduced focal loss on Gaussian heatmaps
  (`CornerNet <https://arxiv.org/abs/1808.01244>`_).
* :func:`prior_prob_bias` -- the classification-bias initialisation of RetinaNet.

Gradient of the sigmoid focal loss (``x`` logit, ``t`` target in [0, 1], ``p = sigmoid(x)``)::

    ce    = -t log p - (1 - t) log(1 - p)         d ce / dx = p - t
    m     = 1 - p_t = p + t - 2 p t               d m / dx  = p (1 - p) (1 - 2 t)
    a_t   = (1 - alpha) + t (2 alpha - 1)         (1 when alpha < 0)
    loss  = a_t * ce * m^gamma
    dL/dx = a_t * [(p - t) m^gamma + gamma m^(gamma - 1) p (1 - p) (1 - 2 t) ce]
    dL/dt = a_t * [-x m^gamma + gamma m^(gamma - 1) (1 - 2 p) ce] + (2 alpha - 1) ce m^gamma
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plugins.core._validate import check_choice, check_positive, check_tensor

__all__ = [
    "sigmoid_focal_loss",
    "alpha_balanced_bce",
    "gaussian_focal_loss",
    "prior_prob_bias",
    "SigmoidFocalLoss",
    "GaussianFocalLoss",
]

_REDUCTIONS = ("none", "mean", "sum")
# Elements handled per chunk. Small enough that the few chunk-sized temporaries stay in
# cache-friendly sizes and add little to peak memory, large enough to amortise the Python
# overhead (a D0 batch of 8 has ~35M logits, i.e. ~17 chunks).
_CHUNK = 1 << 21


def _chunks(numel: int) -> list[tuple[int, int]]:
    return [(s, min(s + _CHUNK, numel)) for s in range(0, numel, _CHUNK)]


def _upcast(x: Tensor) -> Tensor:
    """Half / bfloat16 chunks are computed in float32 (as autocast does for this loss)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _forward_terms(x: Tensor, t: Tensor, gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(p, ce, m)`` for one chunk; ``m = 1 - p_t``."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    m = torch.addcmul(p, t, torch.mul(p, -2.0).add_(1.0))  # p + t (1 - 2p)
    return p, ce, m


def _pow(m: Tensor, gamma: float) -> Tensor:
    if gamma == 0.0:
        return torch.ones_like(m)
    if gamma == 1.0:
        return m.clone()
    if gamma == 2.0:
        return m * m
    return m.pow(gamma)


def _focal_chunk(x: Tensor, t: Tensor, alpha: float, gamma: float) -> Tensor:
    """Elementwise focal loss of one chunk (fresh tensor)."""
    if gamma == 0.0:
        loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    else:
        _, loss, m = _forward_terms(x, t, gamma)
        loss.mul_(m * m if gamma == 2.0 else m.pow_(gamma))
    if alpha >= 0:
        loss.mul_(t * (2.0 * alpha - 1.0) + (1.0 - alpha))
    return loss


def _focal_grads(
    x: Tensor, t: Tensor, alpha: float, gamma: float, want_x: bool, want_t: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Closed-form ``(dL/dx, dL/dt)`` of the elementwise loss for one chunk."""
    p, ce, m = _forward_terms(x, t, gamma)
    m_g = _pow(m, gamma)
    if gamma == 0.0:
        dm_g = None
    elif gamma == 1.0:
        dm_g = ce  # gamma * m^(gamma-1) * ce == ce
    else:
        # gamma * m^(gamma - 1) * ce; m^(gamma-1) is well defined at m = 0 for gamma >= 1.
        dm_g = (m if gamma == 2.0 else m.pow(gamma - 1.0)).mul_(ce).mul_(gamma)
    a_t = None if alpha < 0 else t * (2.0 * alpha - 1.0) + (1.0 - alpha)
    gx = gt = None
    if want_x:
        gx = (p - t).mul_(m_g)
        if dm_g is not None:
            # p (1 - p) (1 - 2t)
            dm = (1.0 - p).mul_(p).mul_(torch.mul(t, -2.0).add_(1.0))
            gx.addcmul_(dm, dm_g)
        if a_t is not None:
            gx.mul_(a_t)
    if want_t:
        gt = torch.mul(x, m_g).neg_()
        if dm_g is not None:
            gt.addcmul_(torch.mul(p, -2.0).add_(1.0), dm_g)
        if a_t is not None:
            gt.mul_(a_t).add_(ce.mul_(m_g), alpha=2.0 * alpha - 1.0)
    return gx, gt


class _SigmoidFocal(torch.autograd.Function):
    """Sigmoid focal loss with a recomputing closed-form backward."""

    @staticmethod
    def forward(ctx, inputs: Tensor, targets: Tensor, alpha: float, gamma: float, reduction: str):
        x = inputs.contiguous().view(-1)
        t = targets.contiguous().view(-1)
        n = x.numel()
        if reduction == "none":
            out = torch.empty_like(x)
            for s, e in _chunks(n):
                out[s:e] = _focal_chunk(_upcast(x[s:e]), _upcast(t[s:e]), alpha, gamma)
            out = out.view(inputs.shape)
        else:
            # Sum per chunk so that no full-size loss tensor is ever materialised.
            acc = _upcast(x.new_zeros(()))
            for s, e in _chunks(n):
                acc = acc + _focal_chunk(_upcast(x[s:e]), _upcast(t[s:e]), alpha, gamma).sum()
            out = (acc / n if reduction == "mean" else acc).to(x.dtype)
        ctx.save_for_backward(inputs, targets)
        ctx.alpha, ctx.gamma, ctx.reduction = alpha, gamma, reduction
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        inputs, targets = ctx.saved_tensors
        want_x, want_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        x = inputs.contiguous().view(-1)
        t = targets.contiguous().view(-1)
        n = x.numel()
        if ctx.reduction == "none":
            g = grad_out.contiguous().view(-1)
        else:
            g = grad_out / n if ctx.reduction == "mean" else grad_out
        gx_all = torch.empty_like(x) if want_x else None
        gt_all = torch.empty_like(t) if want_t else None
        for s, e in _chunks(n):
            gx, gt = _focal_grads(
                _upcast(x[s:e]), _upcast(t[s:e]), ctx.alpha, ctx.gamma, want_x, want_t
            )
            gs = g[s:e] if ctx.reduction == "none" else g
            if gx is not None:
                torch.mul(gx, gs, out=gx_all[s:e])
            if gt is not None:
                torch.mul(gt, gs, out=gt_all[s:e])
        gx_all = None if gx_all is None else gx_all.view(inputs.shape)
        gt_all = None if gt_all is None else gt_all.view(targets.shape)
        return gx_all, gt_all, None, None, None


def _prepare_targets(inputs: Tensor, targets: object) -> Tensor:
    check_tensor("inputs", inputs, floating=True)
    check_tensor("targets", targets)
    assert isinstance(targets, Tensor)
    if tuple(targets.shape) != tuple(inputs.shape):
        raise ValueError(
            f"targets: expected shape {tuple(inputs.shape)} (same as inputs), "
            f"got {tuple(targets.shape)}"
        )
    if targets.dtype != inputs.dtype:
        targets = targets.to(inputs.dtype)
    return targets


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """Sigmoid focal loss of Lin et al. (2017), https://arxiv.org/abs/1708.02002.

    ``loss = alpha_t * (1 - p_t) ** gamma * BCE(inputs, targets)`` elementwise, with the same
    semantics as ``torchvision.ops.sigmoid_focal_loss``. Forward and backward are computed in
    closed form (see the module docstring), saving only ``inputs`` and ``targets``.

    Args:
        inputs: logits, any shape ``(*)``, floating point.
        targets: same shape as ``inputs``; binary (or soft) labels in ``[0, 1]``, e.g. a float
            one-hot encoding of class ids. Bool / integer tensors are converted to the dtype
            of ``inputs``.
        alpha: weight of positives in ``[0, 1]``; negatives get ``1 - alpha``. A negative
            value disables the balancing. Default 0.25.
        gamma: focusing exponent, ``>= 0``. Default 2.0.
        reduction: ``"none"`` (shape ``(*)``), ``"mean"`` or ``"sum"`` (scalars).
            Default ``"none"``.

    Returns:
        Tensor: the loss, shape ``(*)`` for ``"none"``, else a scalar.

    Raises:
        ValueError: non-tensor / non-float ``inputs``, ``targets`` of another shape, unknown
            ``reduction`` or negative ``gamma``.
    """
    targets = _prepare_targets(inputs, targets)
    check_choice("reduction", reduction, _REDUCTIONS)
    check_positive("gamma", gamma, allow_zero=True)
    if inputs.numel() == 0:
        # Empty input: keep torch's conventions (mean of nothing is nan) and the graph.
        loss = inputs * targets
        return loss if reduction == "none" else (loss.sum() if reduction == "sum" else loss.mean())
    return _SigmoidFocal.apply(inputs, targets, float(alpha), float(gamma), reduction)


def alpha_balanced_bce(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, reduction: str = "none"
) -> Tensor:
    """Alpha-balanced binary cross-entropy on logits: :func:`sigmoid_focal_loss` with gamma 0.

    Args:
        inputs: logits, any shape ``(*)``.
        targets: same shape, labels in ``[0, 1]``.
        alpha: weight of positives (negatives get ``1 - alpha``); ``< 0`` disables. Default 0.25.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default ``"none"``.

    Returns:
        Tensor: ``(*)`` or a scalar.
    """
    return sigmoid_focal_loss(inputs, targets, alpha=alpha, gamma=0.0, reduction=reduction)


def gaussian_focal_loss(
    pred: Tensor,
    target: Tensor,
    alpha: float = 2.0,
    beta: float = 4.0,
    pos_weight: float = 1.0,
    neg_weight: float = 1.0,
    eps: float = 1e-12,
) -> Tensor:
    """CornerNet's penalty-reduced focal loss on Gaussian heatmaps, elementwise.

    From `CornerNet <https://arxiv.org/abs/1808.01244>`_ (Eq. 1)::

        loss = pos_weight * -(1 - p)^alpha * log(p + eps)                     where y == 1
             + neg_weight * -(1 - y)^beta * p^alpha * log(1 - p + eps)         elsewhere

    (the negative term vanishes by itself at ``y == 1``). Equals mmdet's
    ``gaussian_focal_loss(pred, target, alpha=alpha, gamma=beta, pos_weight, neg_weight)``.

    Normalisation: the paper (and mmdet's ``CornerHead``) divides the *sum* of this map by the
    number of positives, ``max(1, (target == 1).sum())``; e.g.
    ``gaussian_focal_loss(p, y).sum() / (y == 1).sum().clamp(min=1)``, or
    :class:`GaussianFocalLoss` with ``avg_factor``.

    Args:
        pred: predicted probabilities (already sigmoid-ed) in ``(0, 1)``, any shape ``(*)``,
            e.g. ``(B, C, H, W)``.
        target: Gaussian heatmap, same shape, values in ``[0, 1]``, exactly 1 at centres.
        alpha: exponent on the prediction term. Default 2.0.
        beta: exponent of the penalty reduction ``(1 - y)``. Default 4.0.
        pos_weight: weight of the positive term. Default 1.0.
        neg_weight: weight of the negative term. Default 1.0.
        eps: added inside the logs. Default 1e-12.

    Returns:
        Tensor: elementwise loss, shape ``(*)``.

    Raises:
        ValueError: non-float tensors or mismatched shapes.
    """
    check_tensor("pred", pred, floating=True)
    check_tensor("target", target, floating=True)
    if tuple(target.shape) != tuple(pred.shape):
        raise ValueError(
            f"target: expected shape {tuple(pred.shape)} (same as pred), got {tuple(target.shape)}"
        )
    is_pos = target.eq(1)
    one_minus = 1 - pred
    pos = torch.log(pred + eps).mul(one_minus.pow(alpha)).mul(is_pos)
    neg = torch.log(one_minus + eps).mul(pred.pow(alpha)).mul((1 - target).pow(beta))
    return pos.mul(-pos_weight) - neg.mul(neg_weight)


def prior_prob_bias(prior: float = 0.01) -> float:
    """Bias that makes ``sigmoid(bias) == prior``: ``-log((1 - prior) / prior)``.

    RetinaNet initialises its classification logits this way so that early training is not
    swamped by the loss of the easy negatives (Lin et al., Sec. 4.1).

    Args:
        prior: foreground probability in ``(0, 1)``. Default 0.01.

    Returns:
        float: the bias value (about -4.595 for 0.01).

    Raises:
        ValueError: ``prior`` outside ``(0, 1)``.
    """
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior: expected a value in (0, 1), got {prior!r}")
    return -math.log((1.0 - prior) / prior)


class SigmoidFocalLoss(nn.Module):
    """Module form of :func:`sigmoid_focal_loss`.

    Paper: `Focal Loss for Dense Object Detection <https://arxiv.org/abs/1708.02002>`_.

    Args:
        alpha: positive-class weight, ``< 0`` disables. Default 0.25.
        gamma: focusing exponent. Default 2.0.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default ``"none"``.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none") -> None:
        super().__init__()
        check_choice("reduction", reduction, _REDUCTIONS)
        check_positive("gamma", gamma, allow_zero=True)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.reduction = reduction

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Compute the loss; ``inputs`` logits ``(*)``, ``targets`` same shape."""
        return sigmoid_focal_loss(inputs, targets, self.alpha, self.gamma, self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


class GaussianFocalLoss(nn.Module):
    """Module form of :func:`gaussian_focal_loss` with mmdet-style reduction.

    Paper: `CornerNet <https://arxiv.org/abs/1808.01244>`_.

    ``forward(pred, target, avg_factor=None)``: with ``reduction="mean"`` and an
    ``avg_factor`` (CornerNet passes the number of positive locations, at least 1) the result
    is ``sum(loss) / (avg_factor + float32 eps)``, as mmdet's ``weight_reduce_loss``;
    without ``avg_factor`` it is the plain mean.

    Args:
        alpha: exponent on the prediction term. Default 2.0.
        beta: exponent of ``(1 - target)`` for negatives. Default 4.0.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default ``"mean"``.
        pos_weight: weight of positives. Default 1.0.
        neg_weight: weight of negatives. Default 1.0.
        loss_weight: overall multiplier. Default 1.0.
    """

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 4.0,
        reduction: str = "mean",
        *,
        pos_weight: float = 1.0,
        neg_weight: float = 1.0,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        check_choice("reduction", reduction, _REDUCTIONS)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.reduction = reduction
        self.pos_weight = float(pos_weight)
        self.neg_weight = float(neg_weight)
        self.loss_weight = float(loss_weight)

    def forward(
        self, pred: Tensor, target: Tensor, avg_factor: float | Tensor | None = None
    ) -> Tensor:
        """Loss of probabilities ``pred`` ``(*)`` against heatmap ``target`` (same shape).

        Raises:
            ValueError: ``avg_factor`` given with ``reduction="sum"`` (ambiguous, as mmdet).
        """
        loss = gaussian_focal_loss(
            pred,
            target,
            alpha=self.alpha,
            beta=self.beta,
            pos_weight=self.pos_weight,
            neg_weight=self.neg_weight,
        )
        if self.reduction == "none":
            pass
        elif avg_factor is None:
            loss = loss.sum() if self.reduction == "sum" else loss.mean()
        elif self.reduction == "mean":
            loss = loss.sum() / (avg_factor + torch.finfo(torch.float32).eps)
        else:
            raise ValueError('avg_factor: cannot be used with reduction="sum"')
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, reduction={self.reduction!r}"
