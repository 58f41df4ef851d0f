"""Focal-loss family against torchvision / mmdet references and closed forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from plugins.core.focal_loss import (
    GaussianFocalLoss,
    SigmoidFocalLoss,
    alpha_balanced_bce,
    gaussian_focal_loss,
    prior_prob_bias,
    sigmoid_focal_loss,
)


def _data(dtype=torch.float64, shape=(6, 5, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 3
    t = (torch.rand(shape, generator=g) < 0.3).to(dtype)
    x.view(-1)[:3] = torch.tensor([40.0, -40.0, 0.0], dtype=dtype)  # saturated logits
    return x, t


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("alpha", [0.25, 0.8, -1.0])
@pytest.mark.parametrize("gamma", [0.0, 1.0, 1.5, 2.0])
def test_sigmoid_focal_matches_torchvision(reduction, alpha, gamma):
    x, t = _data(torch.float32)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = sigmoid_focal_loss(x1, t, alpha, gamma, reduction)
    ref = torchvision.ops.sigmoid_focal_loss(x2, t, alpha, gamma, reduction)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    (ours * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-7)


def test_sigmoid_focal_soft_targets_grad_matches_torchvision():
    x, _ = _data()
    t = torch.rand(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    t1, t2 = t.clone().requires_grad_(), t.clone().requires_grad_()
    sigmoid_focal_loss(x1, t1, 0.3, 2.0, "sum").backward()
    torchvision.ops.sigmoid_focal_loss(x2, t2, 0.3, 2.0, "sum").backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(t1.grad, t2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 2.5])
@pytest.mark.parametrize("alpha", [0.25, -1.0])
def test_sigmoid_focal_gradcheck(alpha, gamma):
    x, t = _data(shape=(3, 4))
    t[0] = torch.rand(4, dtype=t.dtype, generator=torch.Generator().manual_seed(2))
    x = x.clamp(-6, 6).requires_grad_()
    t = t.requires_grad_()
    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(
            lambda a, b, r=reduction: sigmoid_focal_loss(a, b, alpha, gamma, r), (x, t)
        )


def test_gamma_zero_is_alpha_balanced_bce():
    x, t = _data()
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    weight = 0.25 * t + 0.75 * (1 - t)
    torch.testing.assert_close(alpha_balanced_bce(x, t), weight * bce)
    torch.testing.assert_close(
        alpha_balanced_bce(x, t, alpha=-1, reduction="mean"),
        F.binary_cross_entropy_with_logits(x, t),
    )
    torch.testing.assert_close(sigmoid_focal_loss(x, t, 0.25, 0.0), weight * bce)


def test_focal_closed_form_single_values():
    # p = sigmoid(0) = 0.5, t = 1: 0.25 * 0.5^2 * log 2.
    out = sigmoid_focal_loss(torch.zeros(1), torch.ones(1))
    assert out.item() == pytest.approx(0.25 * 0.25 * math.log(2.0), rel=1e-6)


def test_focal_one_hot_and_bool_targets():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(10, 5, generator=g)
    labels = torch.randint(0, 5, (10,), generator=g)
    one_hot = F.one_hot(labels, 5)
    ref = torchvision.ops.sigmoid_focal_loss(x, one_hot.float(), reduction="sum")
    torch.testing.assert_close(sigmoid_focal_loss(x, one_hot.float(), reduction="sum"), ref)
    torch.testing.assert_close(sigmoid_focal_loss(x, one_hot, reduction="sum"), ref)
    torch.testing.assert_close(sigmoid_focal_loss(x, one_hot.bool(), reduction="sum"), ref)


def test_focal_large_input_spans_chunks():
    # More elements than one internal chunk so the chunk loop and its seams are exercised.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 1_000_003, generator=g).requires_grad_()
    t = (torch.rand(3, 1_000_003, generator=g) < 0.05).float()
    x2 = x.detach().clone().requires_grad_()
    ours = sigmoid_focal_loss(x, t)
    ref = torchvision.ops.sigmoid_focal_loss(x2, t)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-7)
    ours_mean = sigmoid_focal_loss(x.detach(), t, reduction="mean")
    torch.testing.assert_close(ours_mean, ref.detach().mean(), rtol=1e-5, atol=0)


def test_focal_saves_no_intermediates():
    """Only the caller's inputs/targets are saved for backward (the memory claim)."""
    x, t = _data(torch.float32, shape=(50, 40))
    x.requires_grad_()
    saved = []

    def pack(v):
        saved.append(v)
        return v

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda v: v):
        sigmoid_focal_loss(x, t, reduction="sum")
    assert len(saved) == 2
    assert {v.data_ptr() for v in saved} == {x.data_ptr(), t.data_ptr()}


def test_focal_empty_and_errors():
    e = torch.zeros(0, 4, requires_grad=True)
    out = sigmoid_focal_loss(e, torch.zeros(0, 4))
    assert out.shape == (0, 4)
    assert sigmoid_focal_loss(e, torch.zeros(0, 4), reduction="sum").item() == 0.0
    with pytest.raises(ValueError, match="targets"):
        sigmoid_focal_loss(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="inputs"):
        sigmoid_focal_loss(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(torch.zeros(3), torch.zeros(3), reduction="avg")
    with pytest.raises(ValueError, match="gamma"):
        sigmoid_focal_loss(torch.zeros(3), torch.zeros(3), gamma=-1.0)


def test_sigmoid_focal_module():
    x, t = _data(torch.float32)
    mod = SigmoidFocalLoss(alpha=0.5, gamma=1.0, reduction="mean")
    torch.testing.assert_close(
        mod(x, t), torchvision.ops.sigmoid_focal_loss(x, t, 0.5, 1.0, "mean")
    )
    with pytest.raises(ValueError, match="reduction"):
        SigmoidFocalLoss(reduction="bad")


def test_prior_prob_bias():
    b = prior_prob_bias(0.01)
    assert torch.sigmoid(torch.tensor(b, dtype=torch.float64)).item() == pytest.approx(0.01)
    assert b == pytest.approx(-math.log(99.0))
    with pytest.raises(ValueError, match="prior"):
        prior_prob_bias(1.0)


def _heatmap(seed=0, shape=(2, 3, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(shape, generator=g).clamp(1e-4, 1 - 1e-4)
    target = torch.rand(shape, generator=g) ** 4
    target[target > 0.9] = 1.0  # exact positives
    target[0, 0, 3, 3] = 1.0
    return pred, target


@pytest.mark.parametrize(
    ("alpha", "beta", "pw", "nw"), [(2.0, 4.0, 1.0, 1.0), (1.5, 3.0, 2.0, 0.5)]
)
def test_gaussian_focal_matches_mmdet(alpha, beta, pw, nw):
    from mmdet.models.losses.gaussian_focal_loss import gaussian_focal_loss as ref_fn

    pred, target = _heatmap()
    ours = gaussian_focal_loss(pred, target, alpha, beta, pw, nw)
    # mmdet's function is wrapped by @weighted_loss: reduction="none" gives the element map.
    ref = ref_fn(
        pred, target, alpha=alpha, gamma=beta, pos_weight=pw, neg_weight=nw, reduction="none"
    )
    assert ours.shape == pred.shape
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)


def test_gaussian_focal_module_matches_mmdet_avg_factor():
    from mmdet.models.losses import GaussianFocalLoss as RefLoss

    pred, target = _heatmap(seed=1)
    num_pos = max(1, int(target.eq(1).sum()))
    ours = GaussianFocalLoss(alpha=2.0, beta=4.0, loss_weight=1.0)
    ref = RefLoss(alpha=2.0, gamma=4.0, reduction="mean", loss_weight=1.0)
    torch.testing.assert_close(
        ours(pred, target, avg_factor=num_pos), ref(pred, target, avg_factor=num_pos)
    )
    torch.testing.assert_close(ours(pred, target), ref(pred, target))
    ours_sum = GaussianFocalLoss(reduction="sum", loss_weight=2.0)
    ref_sum = RefLoss(reduction="sum", loss_weight=2.0)
    torch.testing.assert_close(ours_sum(pred, target), ref_sum(pred, target))
    with pytest.raises(ValueError, match="avg_factor"):
        ours_sum(pred, target, avg_factor=3)


def test_gaussian_focal_closed_form_and_grad():
    pred = torch.tensor([0.9, 0.2, 0.2], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    out = gaussian_focal_loss(pred, target)
    expected = torch.tensor(
        [-(0.1**2) * math.log(0.9), -(0.5**4) * 0.2**2 * math.log(0.8), -(0.2**2) * math.log(0.8)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(lambda p: gaussian_focal_loss(p, target), (pred,))


def test_gaussian_focal_errors():
    with pytest.raises(ValueError, match="target"):
        gaussian_focal_loss(torch.rand(2, 3), torch.rand(3, 2))
    assert gaussian_focal_loss(torch.rand(0, 3), torch.rand(0, 3)).shape == (0, 3)
