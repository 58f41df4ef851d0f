"""The mmdet loss wrappers of plugins.mm.losses against mmdet's and torch's own losses."""

from __future__ import annotations

import mmdet.models  # noqa: F401  (installed by tools/setup_env.sh; fail loudly if broken)
import pytest
import torch
import torch.nn.functional as F
from mmdet.models.losses import FocalLoss, GaussianFocalLoss, SmoothL1Loss  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss  # noqa: E402

import plugins.mm  # noqa: E402,F401
from plugins.mm.losses import (  # noqa: E402
    PluginsAlphaBalancedBCELoss,
    PluginsFocalLoss,
    PluginsGaussianFocalLoss,
    PluginsHuberLoss,
    PluginsSmoothL1Loss,
)

ATOL = 1e-6


def _cls_batch(n: int = 50, c: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 3
    labels = torch.randint(0, c + 1, (n,), generator=g)  # c = background
    weight = torch.rand(n, generator=g)
    return logits, labels, weight


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (1.5, 0.25), (0.0, 0.5)])
def test_focal_equals_mmdet_with_integer_labels(reduction, gamma, alpha):
    logits, labels, weight = _cls_batch()
    ours = PluginsFocalLoss(gamma=gamma, alpha=alpha, reduction=reduction, loss_weight=2.0)
    ref = FocalLoss(gamma=gamma, alpha=alpha, reduction=reduction, loss_weight=2.0)
    for kwargs in ({}, {"weight": weight}):
        a = ours(logits, labels, **kwargs)
        b = ref(logits, labels, **kwargs)
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-5)


def test_focal_avg_factor_and_override_equal_mmdet():
    logits, labels, weight = _cls_batch(seed=1)
    ours, ref = PluginsFocalLoss(), FocalLoss()
    a = ours(logits, labels, weight, avg_factor=7.0)
    b = ref(logits, labels, weight, avg_factor=7.0)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-5)
    a = ours(logits, labels, reduction_override="sum")
    b = ref(logits, labels, reduction_override="sum")
    torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-5)


def test_focal_gradient_equals_mmdet():
    logits, labels, weight = _cls_batch(seed=2)
    x1 = logits.clone().requires_grad_()
    x2 = logits.clone().requires_grad_()
    PluginsFocalLoss(gamma=1.5)(x1, labels, weight, avg_factor=5.0).backward()
    FocalLoss(gamma=1.5)(x2, labels, weight, avg_factor=5.0).backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-6, rtol=1e-5)


def test_focal_one_hot_target_equals_torchvision():
    logits, labels, _ = _cls_batch(seed=3)
    one_hot = F.one_hot(labels, 8)[:, :7].float()
    a = PluginsFocalLoss(gamma=2.0, alpha=0.25, reduction="sum")(logits, one_hot)
    b = tv_sigmoid_focal_loss(logits, one_hot, alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # integer labels and their one-hot encoding give the same loss
    c = PluginsFocalLoss(gamma=2.0, alpha=0.25, reduction="sum")(logits, labels)
    torch.testing.assert_close(a, c, atol=ATOL, rtol=1e-6)


def test_alpha_balanced_bce_closed_form():
    logits, labels, _ = _cls_batch(seed=4)
    t = F.one_hot(labels, 8)[:, :7].float()
    a = PluginsAlphaBalancedBCELoss(alpha=0.3, reduction="none")(logits, labels)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    torch.testing.assert_close(a, bce * (0.3 * t + 0.7 * (1 - t)), atol=ATOL, rtol=1e-6)


def test_focal_empty_and_background_only():
    loss = PluginsFocalLoss()
    empty = loss(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), avg_factor=1.0)
    assert empty.shape == () and empty.item() == 0.0
    # only background labels: finite, positive (all negatives are penalised)
    logits = torch.randn(10, 5, generator=torch.Generator().manual_seed(5))
    value = loss(logits, torch.full((10,), 5), avg_factor=1.0)
    assert torch.isfinite(value) and value.item() > 0


def test_focal_bad_labels_raise():
    loss = PluginsFocalLoss()
    with pytest.raises(ValueError, match="target"):
        loss(torch.zeros(3, 5), torch.tensor([0, 6, 1]))
    with pytest.raises(ValueError, match="use_sigmoid"):
        PluginsFocalLoss(use_sigmoid=False)
    with pytest.raises(ValueError, match="reduction"):
        loss(torch.zeros(3, 5), torch.tensor([0, 1, 2]), reduction_override="max")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gaussian_focal_equals_mmdet(reduction):
    g = torch.Generator().manual_seed(6)
    pred = torch.rand(2, 3, 8, 8, generator=g).clamp(1e-4, 1 - 1e-4)
    target = torch.rand(2, 3, 8, 8, generator=g) * 0.9
    target[0, 1, 2, 3] = 1.0
    target[1, 0, 5, 5] = 1.0
    ours = PluginsGaussianFocalLoss(reduction=reduction, loss_weight=1.5)
    ref = GaussianFocalLoss(reduction=reduction, loss_weight=1.5)
    torch.testing.assert_close(ours(pred, target), ref(pred, target), atol=1e-5, rtol=1e-5)
    if reduction == "mean":
        torch.testing.assert_close(
            ours(pred, target, avg_factor=2.0),
            ref(pred, target, avg_factor=2.0),
            atol=1e-5,
            rtol=1e-5,
        )


def test_huber_equals_torch_with_mmdet_reduction():
    g = torch.Generator().manual_seed(7)
    pred, target = torch.randn(20, 4, generator=g) * 0.3, torch.randn(20, 4, generator=g) * 0.3
    weight = (torch.rand(20, 4, generator=g) > 0.5).float()
    loss = PluginsHuberLoss(delta=0.1, loss_weight=50.0)
    elem = F.huber_loss(pred, target, delta=0.1, reduction="none")
    expected = 50.0 * (elem * weight).sum() / (12.0 + torch.finfo(torch.float32).eps)
    torch.testing.assert_close(loss(pred, target, weight, avg_factor=12.0), expected)
    torch.testing.assert_close(
        loss(pred, target, reduction_override="none"), 50.0 * elem, atol=1e-6, rtol=1e-6
    )


def test_smooth_l1_equals_mmdet():
    g = torch.Generator().manual_seed(8)
    pred, target = torch.randn(20, 4, generator=g), torch.randn(20, 4, generator=g)
    weight = torch.rand(20, 4, generator=g)
    ours = PluginsSmoothL1Loss(beta=1.0 / 9, loss_weight=2.0)
    ref = SmoothL1Loss(beta=1.0 / 9, loss_weight=2.0)
    torch.testing.assert_close(
        ours(pred, target, weight, avg_factor=3.0), ref(pred, target, weight, avg_factor=3.0)
    )


def test_losses_build_from_registry():
    init_default_scope("mmdet")
    for cfg, cls in [
        (dict(type="PluginsFocalLoss", gamma=1.5), PluginsFocalLoss),
        (dict(type="PluginsAlphaBalancedBCELoss"), PluginsAlphaBalancedBCELoss),
        (dict(type="PluginsGaussianFocalLoss"), PluginsGaussianFocalLoss),
        (dict(type="PluginsHuberLoss", delta=0.1, loss_weight=50), PluginsHuberLoss),
        (dict(type="PluginsSmoothL1Loss"), PluginsSmoothL1Loss),
    ]:
        assert isinstance(MODELS.build(cfg), cls)
    # mmdet's own names are untouched by the plugin registrations
    assert MODELS.get("FocalLoss") is FocalLoss
