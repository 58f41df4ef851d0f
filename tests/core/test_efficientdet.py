"""EfficientDet network vs effdet 0.4.1 (the reference implementation), plus the converter CLI."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest
import torch

effdet = importlib.import_module("effdet")

from plugins.convert.effdet import (  # noqa: E402
    KeyMismatchError,
    convert_effdet_state_dict,
    convert_to_effdet_state_dict,
)
from plugins.core.efficientdet import EfficientDet  # noqa: E402
from plugins.core.variants import EFFICIENTDET_VARIANTS, EfficientDetVariant  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4  # measured max abs diff: ~1e-5 (float32, channels-last vs NCHW conv kernels)


pytestmark = pytest.mark.usefixtures("single_thread")


def _effdet_model(name: str, image_size: tuple[int, int], seed: int = 0) -> torch.nn.Module:
    """effdet's tf_efficientdet_<name> with random weights *and* random BN statistics."""
    torch.manual_seed(seed)
    model = effdet.create_model(
        f"tf_efficientdet_{name}",
        pretrained=False,
        pretrained_backbone=False,
        image_size=image_size,
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
            weights = getattr(m, "edge_weights", None)
            if isinstance(weights, torch.nn.Parameter):
                weights.uniform_(-0.5, 2.0)  # includes negatives: exercises the ReLU
    return model.eval()


@pytest.mark.parametrize(
    "name, image_size",
    [("d0", (128, 128)), ("d1", (128, 128)), ("d3", (128, 128)), ("d0", (100, 156))],
)
def test_outputs_match_effdet(name: str, image_size: tuple[int, int]) -> None:
    ref = _effdet_model(name, image_size)
    ours = EfficientDet(f"efficientdet_{name}").eval()
    ref_sd = ref.state_dict()
    converted = convert_effdet_state_dict(ref_sd, f"efficientdet_{name}")
    ours.load_state_dict(converted, strict=True)

    # the inverse conversion gives back exactly effdet's keys and the same tensors
    back = convert_to_effdet_state_dict(ours.state_dict(), f"efficientdet_{name}")
    assert set(back) == set(ref_sd)
    assert all(torch.equal(back[k], ref_sd[k]) for k in ref_sd)

    torch.manual_seed(1)
    images = torch.randn(2, 3, *image_size)
    with torch.no_grad():
        ref_cls, ref_box = ref(images)
        cls, box = ours(images)
    assert len(cls) == len(ref_cls) == 5 and len(box) == len(ref_box) == 5
    worst = 0.0
    for a, b in zip(cls + box, ref_cls + ref_box):
        assert a.shape == b.shape
        assert a.is_contiguous()
        worst = max(worst, (a - b).abs().max().item())
    assert worst < TOL, f"max abs diff {worst:.3g}"


@pytest.mark.parametrize("name", ["d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "d7x"])
def test_parameter_count_matches_effdet(name: str) -> None:
    with torch.device("meta"):
        ref = effdet.create_model(
            f"tf_efficientdet_{name}", pretrained=False, pretrained_backbone=False
        )
        ours = EfficientDet(f"efficientdet_{name}")
    ref_count = sum(p.numel() for p in ref.parameters())
    our_count = sum(p.numel() for p in ours.parameters())
    assert our_count == ref_count == EFFICIENTDET_VARIANTS[f"efficientdet_{name}"].expected_params
    # same structure, tensor by tensor, through the converter
    converted = convert_effdet_state_dict(ref.state_dict(), f"efficientdet_{name}")
    ours_sd = ours.state_dict()
    assert set(converted) == set(ours_sd)
    assert all(converted[k].shape == ours_sd[k].shape for k in ours_sd)


@pytest.mark.parametrize("name", ["d0", "d3", "d6", "d7", "d7x"])
def test_variant_table_matches_effdet_config(name: str) -> None:
    cfg = effdet.get_efficientdet_config(f"tf_efficientdet_{name}")
    v = EFFICIENTDET_VARIANTS[f"efficientdet_{name}"]
    assert (v.image_size, v.image_size) == tuple(cfg.image_size)
    assert v.backbone == cfg.backbone_name.replace("tf_", "")
    assert v.fpn_channels == cfg.fpn_channels
    assert v.fpn_repeats == cfg.fpn_cell_repeats
    assert v.head_repeats == cfg.box_class_repeats
    assert (v.min_level, v.max_level, v.num_scales) == (
        cfg.min_level,
        cfg.max_level,
        cfg.num_scales,
    )
    assert [tuple(r) for r in cfg.aspect_ratios] == list(v.aspect_ratios)
    assert v.anchor_scale == cfg.anchor_scale
    assert v.fusion == {None: "fast", "bifpn_sum": "sum", "bifpn_attn": "softmax"}[cfg.fpn_name]
    assert v.bn_eps == cfg.norm_kwargs["eps"] and v.bn_momentum == cfg.norm_kwargs["momentum"]
    assert v.conv_bias == cfg.redundant_bias and v.tf_same == (cfg.pad_type == "same")
    assert v.drop_path_rate == cfg.backbone_args["drop_path_rate"]


def test_variant_is_frozen() -> None:
    v = EFFICIENTDET_VARIANTS["efficientdet_d0"]
    with pytest.raises(AttributeError):
        v.fpn_channels = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        EFFICIENTDET_VARIANTS["efficientdet_d9"] = v  # type: ignore[index]
    assert isinstance(v, EfficientDetVariant)


def test_test_variant_forward_backward() -> None:
    torch.manual_seed(0)
    model = EfficientDet("efficientdet_test", num_classes=3).train()
    v = model.variant
    images = torch.randn(2, 3, 128, 96, requires_grad=True)
    cls, box = model(images)
    a = v.num_anchors
    for level, (c, b) in enumerate(zip(cls, box), start=v.min_level):
        h, w = -(-128 // 2**level), -(-96 // 2**level)
        assert c.shape == (2, a * 3, h, w)
        assert b.shape == (2, a * 4, h, w)
    loss = sum(t.square().mean() for t in cls + box)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert images.grad is not None and images.grad.abs().sum() > 0
    # class bias starts at the focal-loss prior
    expected = -torch.log(torch.tensor((1 - 0.01) / 0.01))
    fresh = EfficientDet("efficientdet_test", num_classes=3)
    assert torch.allclose(fresh.class_net.predict.pw.bias, expected.expand(a * 3))
    assert torch.count_nonzero(fresh.box_net.predict.pw.bias) == 0

    feats = model.features(images.detach())
    assert [tuple(f.shape) for f in feats] == [
        (2, v.fpn_channels, -(-128 // 2**lv), -(-96 // 2**lv)) for lv in range(3, 8)
    ]


def test_bad_input_raises() -> None:
    model = EfficientDet("efficientdet_test").eval()
    with pytest.raises(ValueError, match="images"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="images"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match="images"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match="variant"):
        EfficientDet("efficientdet_d9")
    with pytest.raises(ValueError, match="num_classes"):
        EfficientDet("efficientdet_test", num_classes=0)
    # empty batch gives empty outputs
    with torch.no_grad():
        cls, box = model(torch.zeros(0, 3, 64, 64))
    assert cls[0].shape[0] == 0 and box[-1].shape[0] == 0


def test_converter_rejects_foreign_keys() -> None:
    with pytest.raises(KeyMismatchError, match="fpn.bogus.weight"):
        convert_effdet_state_dict({"fpn.bogus.weight": torch.zeros(1)}, "efficientdet_d0")


def _load_cli():
    spec = importlib.util.spec_from_file_location(
        "convert_effdet_cli", REPO / "tools" / "convert_effdet.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_cli(tmp_path: Path) -> None:
    cli = _load_cli()
    ref = _effdet_model("d0", (128, 128))
    src = tmp_path / "effdet_d0.pth"
    # effdet training checkpoints hold the weights under "state_dict"
    torch.save({"state_dict": ref.state_dict(), "epoch": 3}, src)
    dst = tmp_path / "ours.pth"
    assert cli.main(["--variant", "efficientdet_d0", str(src), str(dst)]) == 0
    ours = EfficientDet("efficientdet_d0").eval()
    ours.load_state_dict(torch.load(dst, weights_only=True), strict=True)
    assert torch.equal(
        ours.backbone.stem_conv.weight,
        ref.backbone.conv_stem.weight.to(ours.backbone.stem_conv.weight),
    )

    missing = tmp_path / "nope.pth"
    with pytest.raises(SystemExit, match="nope.pth"):
        cli.main(["--variant", "efficientdet_d0", str(missing), str(dst)])

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="corrupt.pth"):
        cli.main(["--variant", "efficientdet_d0", str(corrupt), str(dst)])

    # a D0 checkpoint is not a D1 model: keys and shapes are listed
    with pytest.raises(SystemExit, match="missing keys") as info:
        cli.main(["--variant", "efficientdet_d1", str(src), str(dst)])
    assert "effdet_d0.pth" in str(info.value) and "backbone.stages.1.2" in str(info.value)

    partial = {k: v for k, v in ref.state_dict().items() if not k.startswith("box_net.")}
    partial["fpn.extra_thing.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(partial, bad)
    with pytest.raises(SystemExit, match="fpn.extra_thing.weight"):
        cli.main(["--variant", "efficientdet_d0", str(bad), str(dst)])


@pytest.mark.parametrize(
    "name, tf_same", [("efficientnet_b0", False), ("tf_efficientnet_b2", True)]
)
def test_backbone_matches_timm(name: str, tf_same: bool) -> None:
    timm = importlib.import_module("timm")
    from plugins.convert.effdet import effdet_key_to_ours
    from plugins.core.efficientnet import efficientnet

    torch.manual_seed(0)
    ref = timm.create_model(name, features_only=True, out_indices=(1, 2, 3, 4)).eval()
    eps = 1e-3 if tf_same else 1e-5
    ours = efficientnet(
        name.replace("tf_", ""), out_strides=(4, 8, 16, 32), tf_same=tf_same, bn_eps=eps
    ).eval()
    assert ours.out_channels == tuple(ref.feature_info.channels())
    ir = {k.split(".")[1] + "." + k.split(".")[2] for k in ref.state_dict() if ".conv_pwl." in k}
    variant = EFFICIENTDET_VARIANTS["efficientdet_d2"]
    converted = {
        effdet_key_to_ours("backbone." + k, variant, ir)[len("backbone.") :]: v
        for k, v in ref.state_dict().items()
    }
    ours.load_state_dict(converted, strict=True)
    images = torch.randn(1, 3, 70, 90)  # odd sizes exercise the asymmetric padding
    with torch.no_grad():
        for a, b in zip(ours(images), ref(images)):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_backbone_stochastic_depth_only_in_training() -> None:
    from plugins.core.efficientnet import EfficientNet

    torch.manual_seed(0)
    net = EfficientNet(0.25, 1.0, drop_path_rate=0.5)
    images = torch.randn(4, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(net(images), net(images)))
    net.train()
    with torch.no_grad():
        torch.manual_seed(1)
        first = net(images)
        torch.manual_seed(2)
        second = net(images)
        torch.manual_seed(1)
        again = net(images)
    assert not torch.equal(first[-1], second[-1])  # residual branches were dropped differently
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    no_drop = EfficientNet(0.25, 1.0, drop_path_rate=0.0).train()
    no_drop.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.manual_seed(1)
        x = no_drop(images)
        torch.manual_seed(2)
        y = no_drop(images)
    assert all(torch.equal(a, b) for a, b in zip(x, y))
