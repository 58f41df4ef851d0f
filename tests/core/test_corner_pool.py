"""Corner pooling: closed form, gradients, and agreement with mmcv.ops.CornerPool."""

from __future__ import annotations

import importlib

import pytest
import torch

from plugins.core.corner_pool import (
    _SCAN,
    DIRECTIONS,
    BottomRightPool,
    CornerPool,
    CornerPoolBlock,
    TopLeftPool,
    _CornerPoolFn,
    corner_pool,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _brute_force(x: torch.Tensor, direction: str) -> torch.Tensor:
    """Definition by slicing: max over the rest of the column / row."""
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            if direction == "top":
                win = x[..., i:, j]
            elif direction == "bottom":
                win = x[..., : i + 1, j]
            elif direction == "left":
                win = x[..., i, j:]
            else:
                win = x[..., i, : j + 1]
            out[..., i, j] = win.amax(-1)
    return out


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_matches_definition(direction):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=g)
    torch.testing.assert_close(
        corner_pool(x, direction), _brute_force(x, direction), rtol=0, atol=0
    )
    # the row-scan kernel also handles the forward W scan that "right" hands to torch.cummax
    axis, reverse = _SCAN[direction]
    torch.testing.assert_close(
        _CornerPoolFn.apply(x, axis, reverse), _brute_force(x, direction), rtol=0, atol=0
    )


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_gradcheck_without_ties(direction):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: corner_pool(t, direction), (x,))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_gradient_mass_is_conserved_on_ties(direction):
    # every output position sends its gradient to exactly one input position
    x = torch.randint(0, 2, (2, 3, 6, 6), generator=torch.Generator().manual_seed(2)).float()
    x.requires_grad_(True)
    corner_pool(x, direction).sum().backward()
    assert x.grad.sum().item() == x.numel()
    assert (x.grad >= 0).all()


def test_bad_input_raises():
    with pytest.raises(ValueError, match="x"):
        corner_pool(torch.zeros(3, 4, 5), "top")
    with pytest.raises(ValueError, match="x"):
        corner_pool(torch.zeros(1, 3, 4, 5, dtype=torch.long), "top")
    with pytest.raises(ValueError, match="direction"):
        corner_pool(torch.zeros(1, 3, 4, 5), "up")
    with pytest.raises(ValueError, match="direction"):
        CornerPool("diagonal")
    with pytest.raises(ValueError, match="directions"):
        CornerPoolBlock(4, ("top",))


def test_empty_input():
    x = torch.zeros(0, 3, 4, 5)
    assert corner_pool(x, "left").shape == (0, 3, 4, 5)
    x = torch.zeros(2, 3, 0, 5)
    assert corner_pool(x, "top").shape == (2, 3, 0, 5)


# ---------------------------------------------------------------- reference: mmcv.ops.CornerPool
@pytest.fixture(scope="module")
def mmcv_ops():
    return importlib.import_module("mmcv.ops")


def _compare_with_mmcv(mmcv_ops, x, direction, seed):
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    ref = mmcv_ops.CornerPool(direction)(a)
    ref.backward(grad)
    ours = corner_pool(b, direction)
    ours.backward(grad)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    # same routing; sums of several gradients may differ in the last bit (summation order)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_matches_mmcv_random(mmcv_ops, direction):
    x = torch.randn(2, 4, 13, 11, generator=torch.Generator().manual_seed(3))
    _compare_with_mmcv(mmcv_ops, x, direction, seed=4)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_matches_mmcv_ties(mmcv_ops, direction):
    # small integers: many equal values along every scan line
    x = torch.randint(0, 3, (2, 4, 12, 9), generator=torch.Generator().manual_seed(5)).float()
    _compare_with_mmcv(mmcv_ops, x, direction, seed=6)
    # integer-valued gradients make the comparison exact, so tie routing must match exactly
    grad = torch.randint(-4, 5, x.shape, generator=torch.Generator().manual_seed(7)).float()
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    mmcv_ops.CornerPool(direction)(a).backward(grad)
    corner_pool(b, direction).backward(grad)
    assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_matches_mmcv_constant_and_inf(mmcv_ops, direction):
    x = torch.ones(1, 2, 6, 5)
    x[0, 1, 2, 3] = float("inf")
    x[0, 0, 4, 1] = float("-inf")
    _compare_with_mmcv(mmcv_ops, x, direction, seed=8)


@pytest.mark.parametrize(
    "cls, directions", [(TopLeftPool, ["top", "left"]), (BottomRightPool, ["bottom", "right"])]
)
def test_pool_module_matches_mmdet(cls, directions):
    corner_head = importlib.import_module("mmdet.models.dense_heads.corner_head")
    from plugins.convert.mmdet_cornernet import corner_head_key_from_mmdet

    torch.manual_seed(9)
    ref = corner_head.BiCornerPool(6, directions, feat_channels=5, out_channels=6)
    # randomise BN statistics/affine so that eval mode is a real check
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    ours = cls(6, pool_channels=5)
    prefix = "levels.0.tl_pool."
    mapped = {
        corner_head_key_from_mmdet("tl_pool.0." + k)[len(prefix) :]: v
        for k, v in ref.state_dict().items()
    }
    ours.load_state_dict(mapped, strict=True)
    x = torch.randn(2, 6, 9, 8)
    for train in (False, True):
        ref.train(train)
        ours.train(train)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_non_finite_gradients_match_mmcv(mmcv_ops, direction):
    # inf / NaN upstream gradients take the exact (selection-based) backward path
    x = torch.randint(0, 3, (2, 3, 7, 6), generator=torch.Generator().manual_seed(10)).float()
    grad = torch.randint(-3, 4, x.shape, generator=torch.Generator().manual_seed(11)).float()
    grad[0, 1, 3, 2] = float("inf")
    grad[1, 0, 5, 5] = float("nan")
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    mmcv_ops.CornerPool(direction)(a).backward(grad)
    corner_pool(b, direction).backward(grad)
    torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0, equal_nan=True)
