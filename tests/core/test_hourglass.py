"""HourglassNet: shapes, options, and agreement with mmdet's HourglassNet."""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys

import pytest
import torch

from plugins.core.hourglass import HOURGLASS_104, HOURGLASS_TINY, HourglassNet

pytestmark = pytest.mark.usefixtures("single_thread")


def _randomise_(module: torch.nn.Module, seed: int) -> None:
    """Random weights and BatchNorm statistics (so eval mode is a real check)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(module.state_dict().items()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_((torch.rand(t.shape, generator=g) - 0.5) * 0.6)


def test_tiny_forward_shapes():
    torch.manual_seed(0)
    net = HourglassNet(**HOURGLASS_TINY)
    outs = net(torch.randn(2, 3, 64, 48))
    assert isinstance(outs, list) and len(outs) == 2
    for o in outs:
        assert o.shape == (2, 8, 16, 12)


def test_odd_input_size_rounds_like_strided_convs():
    torch.manual_seed(0)
    net = HourglassNet(**HOURGLASS_TINY).eval()
    h, w = 37, 30
    outs = net(torch.randn(1, 3, h, w))
    expect = (math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2))
    assert outs[-1].shape[-2:] == expect


def test_single_stack_has_no_merge_layers():
    net = HourglassNet(**{**HOURGLASS_TINY, "num_stacks": 1})
    assert len(net.merge_in) == len(net.merge_out) == len(net.inter_blocks) == 0
    assert len(net(torch.randn(1, 3, 32, 32))) == 1


def test_norm_eval_keeps_batchnorm_frozen():
    net = HourglassNet(**HOURGLASS_TINY, norm_eval=True).train()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = bns[0].running_mean.clone()
    net(torch.randn(2, 3, 32, 32) * 5 + 3)
    assert torch.equal(bns[0].running_mean, before)
    plain = HourglassNet(**HOURGLASS_TINY).train()
    assert all(m.training for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="stage_blocks"):
        HourglassNet(downsample_times=2, stage_channels=(8, 8, 16), stage_blocks=(1, 1))
    with pytest.raises(ValueError, match="stage_channels"):
        HourglassNet(downsample_times=3, stage_channels=(8, 8, 16), stage_blocks=(1, 1, 1))
    net = HourglassNet(**HOURGLASS_TINY)
    with pytest.raises(ValueError, match="images"):
        net(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="images"):
        net(torch.randn(3, 32, 32))


# ------------------------------------------------------------------ reference: mmdet HourglassNet
@pytest.fixture(scope="module")
def mmdet_hourglass():
    return importlib.import_module("mmdet.models.backbones.hourglass").HourglassNet


def _mapped(ref_sd: dict) -> dict:
    from plugins.convert.mmdet_cornernet import hourglass_key_from_mmdet

    return {hourglass_key_from_mmdet(k): v for k, v in ref_sd.items()}


def test_hourglass104_layout_matches_mmdet(mmdet_hourglass):
    # built on the meta device: names and shapes only, no memory
    with torch.device("meta"):
        ref = mmdet_hourglass(**{k: v for k, v in HOURGLASS_104.items()})
        ours = HourglassNet()
    ref_shapes = {k: tuple(v.shape) for k, v in _mapped(ref.state_dict()).items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert ref_shapes == our_shapes
    n_ref = sum(p.numel() for p in ref.parameters())
    assert sum(p.numel() for p in ours.parameters()) == n_ref


@pytest.mark.parametrize("num_stacks", [1, 2])
def test_tiny_matches_mmdet(mmdet_hourglass, num_stacks):
    cfg = {**HOURGLASS_TINY, "num_stacks": num_stacks}
    torch.manual_seed(0)
    ref = mmdet_hourglass(**cfg)
    _randomise_(ref, seed=1)
    ours = HourglassNet(**cfg)
    sd = _mapped(ref.state_dict())
    if num_stacks == 1:  # mmdet builds one unused intermediate block for a single stack
        sd = {k: v for k, v in sd.items() if not k.startswith("inter_blocks.")}
    ours.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 40, 36, generator=torch.Generator().manual_seed(2))
    for train in (False, True):
        ref.train(train)
        ours.train(train)
        got, want = ours(x), ref(x)
        assert len(got) == len(want) == num_stacks
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_default_layout_trains_on_cpu():
    """The default (NCHW) trains the demo-sized hourglass on CPU. Channels-last is off by
    default because with torch 2.13 the backward of a channels-last 1x1 stride-2 conv with 8
    input channels at 64x64 (this stem block) kills the process; the step runs in a child
    process so that a crash fails this test instead of the whole session."""
    assert not HourglassNet(**HOURGLASS_TINY).channels_last
    code = (
        "import torch\n"
        "from plugins.core.hourglass import HourglassNet\n"
        "torch.manual_seed(0)\n"
        "net = HourglassNet(downsample_times=3, stage_channels=(16, 24, 32, 48),\n"
        "                   stage_blocks=(1, 1, 1, 1), feat_channel=24)\n"
        "for _ in range(2):\n"
        "    sum(f.square().mean() for f in net(torch.randn(2, 3, 128, 128))).backward()\n"
        "g = net.stem[1].shortcut[0].weight.grad\n"
        "assert g is not None and bool(torch.isfinite(g).all())\n"
        "print('trained')\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trained" in proc.stdout
