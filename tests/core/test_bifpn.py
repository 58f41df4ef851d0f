"""BiFPN, weighted fusion and TF-"same" padding helpers."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

from plugins.convert.effdet import effdet_key_to_ours
from plugins.core.bifpn import BiFPN
from plugins.core.efficientnet import MaxPool2dSame, conv2d
from plugins.core.fusion import WeightedFusion
from plugins.core.variants import EFFICIENTDET_VARIANTS

pytestmark = pytest.mark.usefixtures("single_thread")


def _inputs(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 4, 5, 6, generator=g) for _ in range(n)]


def test_fast_fusion_weights_and_output() -> None:
    fuse = WeightedFusion(3, "fast")
    with torch.no_grad():
        fuse.weight.copy_(torch.tensor([2.0, -1.0, 0.5]))
    w = fuse.normalized_weights()
    assert (w >= 0).all()
    assert w[1] == 0  # negative raw weight is clipped by the ReLU
    assert abs(w.sum().item() - 1.0) < 1e-3  # eps = 1e-4 keeps it just below 1
    xs = _inputs(3)
    expected = (2.0 * xs[0] + 0.5 * xs[2]) / (2.5 + 1e-4)
    torch.testing.assert_close(fuse(xs), expected, rtol=1e-6, atol=1e-6)


def test_softmax_fusion_weights_and_output() -> None:
    fuse = WeightedFusion(2, "softmax")
    with torch.no_grad():
        fuse.weight.copy_(torch.tensor([0.3, -1.2]))
    w = fuse.normalized_weights()
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))
    e = torch.exp(torch.tensor([0.3, -1.2]))
    xs = _inputs(2)
    expected = (e[0] * xs[0] + e[1] * xs[1]) / e.sum()
    torch.testing.assert_close(fuse(xs), expected, rtol=1e-6, atol=1e-6)


def test_sum_fusion_has_no_parameters() -> None:
    fuse = WeightedFusion(3, "sum")
    assert list(fuse.parameters()) == []
    assert fuse.normalized_weights() is None
    xs = _inputs(3)
    torch.testing.assert_close(fuse(xs), xs[0] + xs[1] + xs[2])


def test_fusion_gradients_reach_weights() -> None:
    fuse = WeightedFusion(2, "fast")
    xs = [x.requires_grad_() for x in _inputs(2)]
    fuse(xs).sum().backward()
    assert fuse.weight.grad is not None and torch.isfinite(fuse.weight.grad).all()
    assert all(x.grad is not None for x in xs)


def test_fusion_bad_arguments() -> None:
    with pytest.raises(ValueError, match="method"):
        WeightedFusion(2, "fastattn")
    with pytest.raises(ValueError, match="num_inputs"):
        WeightedFusion(0)
    fuse = WeightedFusion(2)
    with pytest.raises(ValueError, match="inputs"):
        fuse(_inputs(3))
    with pytest.raises(ValueError, match="inputs"):
        fuse([torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 4, 4)])


@pytest.mark.parametrize("size", [(7, 8), (9, 10), (16, 15), (1, 2)])
@pytest.mark.parametrize("kernel", [3, 5])
def test_tf_same_conv_and_pool_match_timm(size: tuple[int, int], kernel: int) -> None:
    timm_layers = importlib.import_module("timm.layers")
    torch.manual_seed(0)
    x = torch.randn(2, 4, *size)
    ours = conv2d(4, 4, kernel, stride=2, groups=4, tf_same=True)
    ref = timm_layers.create_conv2d(4, 4, kernel, stride=2, padding="same", depthwise=True)
    ref.weight.data.copy_(ours.weight.data)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)  # second call uses the cache
    pool = MaxPool2dSame(kernel, 2)
    ref_pool = timm_layers.create_pool2d("max", kernel_size=kernel, stride=2, padding="same")
    assert torch.equal(pool(x), ref_pool(x))
    assert pool(x).shape[-2:] == (-(-size[0] // 2), -(-size[1] // 2))


@pytest.mark.parametrize("method, effdet_name", [("softmax", "bifpn_attn"), ("fast", "bifpn_fa")])
def test_bifpn_matches_effdet(method: str, effdet_name: str) -> None:
    effdet = importlib.import_module("effdet")
    from effdet.efficientdet import BiFpn

    in_channels, image_size, width = (16, 24, 40), (96, 160), 24
    cfg = effdet.get_efficientdet_config("tf_efficientdet_d0")
    cfg.fpn_name = effdet_name
    cfg.fpn_channels = width
    cfg.fpn_cell_repeats = 2
    cfg.image_size = image_size
    feature_info = [dict(num_chs=c, reduction=2**lv) for c, lv in zip(in_channels, (3, 4, 5))]
    torch.manual_seed(0)
    ref = BiFpn(cfg, feature_info).eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
            w = getattr(m, "edge_weights", None)
            if isinstance(w, torch.nn.Parameter):
                w.uniform_(-0.5, 2.0)

    ours = BiFPN(in_channels, width, num_levels=5, repeats=2, fusion=method).eval()
    variant = dataclasses.replace(EFFICIENTDET_VARIANTS["efficientdet_test"], fpn_channels=width)
    converted = {
        effdet_key_to_ours("fpn." + k, variant, set())[len("fpn.") :]: v
        for k, v in ref.state_dict().items()
    }
    ours.load_state_dict(converted, strict=True)

    torch.manual_seed(1)
    feats = [
        torch.randn(2, c, image_size[0] // 2**lv, image_size[1] // 2**lv)
        for c, lv in zip(in_channels, (3, 4, 5))
    ]
    with torch.no_grad():
        expected = ref(list(feats))
        got = ours(feats)
    assert len(got) == 5
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_bifpn_levels_and_shapes() -> None:
    torch.manual_seed(0)
    fpn = BiFPN((8, 16), width=12, num_levels=4, repeats=1, fusion="sum", tf_same=False)
    assert len(fpn.extra) == 2 and fpn.extra[1].proj is None  # second extra level: pool only
    feats = [torch.randn(1, 8, 20, 18), torch.randn(1, 16, 10, 9)]
    outs = fpn(feats)
    assert [tuple(o.shape) for o in outs] == [
        (1, 12, 20, 18),
        (1, 12, 10, 9),
        (1, 12, 5, 5),
        (1, 12, 3, 3),
    ]
    outs[-1].sum().backward()


def test_bifpn_bad_input() -> None:
    fpn = BiFPN((8, 16), width=12, num_levels=3, repeats=1)
    good = [torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4)]
    with pytest.raises(ValueError, match=r"feats\[1\]"):
        fpn([good[0], torch.randn(1, 15, 4, 4)])
    with pytest.raises(ValueError, match=r"feats\[0\]"):
        fpn([torch.randn(8, 8, 8), good[1]])
    with pytest.raises(ValueError, match=r"feats\[1\]"):
        fpn([good[0], torch.randn(2, 16, 4, 4)])  # batch sizes disagree
    with pytest.raises(ValueError, match="feats"):
        fpn(good[:1])
    with pytest.raises(ValueError, match="fusion"):
        BiFPN((8,), fusion="attn")
    with pytest.raises(ValueError, match="num_levels"):
        BiFPN((8, 16, 32), num_levels=2)
