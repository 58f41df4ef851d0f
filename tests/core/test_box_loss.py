"""Box losses against torch / fvcore references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fvcore.nn import smooth_l1_loss as fv_smooth_l1

from plugins.core.box_loss import huber_loss, smooth_l1_loss


def _pair(seed=0, shape=(4, 30, 4)):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=g, dtype=torch.float64) * 0.2
    b = torch.randn(shape, generator=g, dtype=torch.float64) * 0.2
    b.view(-1)[:2] = a.view(-1)[:2]  # zero error
    return a, b


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("delta", [0.1, 1.0, 0.03])
def test_huber_matches_torch(reduction, delta):
    a, b = _pair()
    a1, a2 = a.clone().requires_grad_(), a.clone().requires_grad_()
    ours = huber_loss(a1, b, delta=delta, reduction=reduction)
    ref = F.huber_loss(a2, b, delta=delta, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-12, atol=1e-14)


def test_huber_default_delta_is_effdet():
    a, b = _pair()
    torch.testing.assert_close(huber_loss(a, b), F.huber_loss(a, b, delta=0.1, reduction="none"))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("beta", [0.1, 1.0, 0.0])
def test_smooth_l1_matches_torch_and_fvcore(reduction, beta):
    a, b = _pair(1)
    a1, a2 = a.clone().requires_grad_(), a.clone().requires_grad_()
    ours = smooth_l1_loss(a1, b, beta=beta, reduction=reduction)
    ref = F.smooth_l1_loss(a2, b, beta=beta, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours, fv_smooth_l1(a, b, beta, reduction), rtol=1e-12, atol=1e-14)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-12, atol=1e-14)


def test_weight_broadcasts():
    a, b = _pair(2)
    w = (torch.rand(4, 30, 1, generator=torch.Generator().manual_seed(3)) > 0.5).double()
    ref = F.huber_loss(a, b, delta=0.1, reduction="none") * w
    torch.testing.assert_close(huber_loss(a, b, weight=w), ref)
    torch.testing.assert_close(huber_loss(a, b, reduction="sum", weight=w), ref.sum())
    torch.testing.assert_close(huber_loss(a, b, reduction="mean", weight=w), ref.mean())
    ref_s = F.smooth_l1_loss(a, b, beta=0.1, reduction="none") * w
    torch.testing.assert_close(smooth_l1_loss(a, b, reduction="sum", weight=w), ref_s.sum())


def test_errors_and_empty():
    a = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="target"):
        huber_loss(a, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="weight"):
        huber_loss(a, a, weight=torch.ones(5))
    with pytest.raises(ValueError, match="delta"):
        huber_loss(a, a, delta=0.0)
    with pytest.raises(ValueError, match="beta"):
        smooth_l1_loss(a, a, beta=-1.0)
    with pytest.raises(ValueError, match="input"):
        smooth_l1_loss(a.long(), a)
    with pytest.raises(ValueError, match="reduction"):
        smooth_l1_loss(a, a, reduction="avg")
    e = torch.zeros(0, 4)
    assert huber_loss(e, e).shape == (0, 4)
    assert smooth_l1_loss(e, e, reduction="sum").item() == 0.0
