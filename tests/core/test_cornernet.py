"""CornerNet head, targets, losses and decoding; agreement with mmdet 3.3's CornerHead."""

from __future__ import annotations

import math

import pytest
import torch

from plugins.convert.mmdet_cornernet import (
    convert_mmdet_cornernet_state_dict,
    to_mmdet_cornernet_state_dict,
)
from plugins.core.cornernet import (
    OUTPUT_KEYS,
    CornerNet,
    CornerNetHead,
    associative_embedding_loss,
    cornernet_loss,
    cornernet_targets,
    decode_corners,
    draw_gaussian,
    gaussian_kernel,
    gaussian_radius,
)
from plugins.core.hourglass import HOURGLASS_TINY, HourglassNet

NUM_CLASSES = 3
IN_CH = 8
IMG = (64, 64)
FEAT = (2, NUM_CLASSES, 16, 16)


pytestmark = pytest.mark.usefixtures("single_thread")


def _randomise_(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(module.state_dict().items()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_((torch.rand(t.shape, generator=g) - 0.5) * 0.5)


def _gt(seed: int = 0):
    """Two images: random boxes (some sharing a class and overlapping) and edge cases; one
    image without objects is tested separately."""
    g = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for n in (5, 3):
        xy = torch.rand(n, 2, generator=g) * 44
        wh = torch.rand(n, 2, generator=g) * 30 + 0.3
        b = torch.cat([xy, (xy + wh).clamp(max=64)], 1)
        boxes.append(b)
        labels.append(torch.randint(0, NUM_CLASSES, (n,), generator=g))
    # box touching the right/bottom border, a tiny box, and a duplicate corner cell
    boxes[0] = torch.cat([boxes[0], torch.tensor([[40.0, 30.0, 64.0, 64.0], [5.2, 6.1, 5.9, 6.8]])])
    labels[0] = torch.cat([labels[0], torch.tensor([1, 1])])
    boxes[1] = torch.cat([boxes[1], boxes[1][:1] + torch.tensor([[0.5, 0.5, 9.0, 9.0]])])
    labels[1] = torch.cat([labels[1], labels[1][:1]])
    return boxes, labels


# ------------------------------------------------------------------------ closed forms / shapes
def test_gaussian_radius_closed_form():
    # the radius makes the "both corners outside" case exactly reach the IoU
    h, w, iou = 20.0, 30.0, 0.3
    r = gaussian_radius((h, w), iou)
    r3 = (
        -2 * iou * (h + w) + math.sqrt((2 * iou * (h + w)) ** 2 + 16 * iou * (1 - iou) * w * h)
    ) / (8 * iou)
    assert r <= r3 + 1e-12
    # tensor input gives the same numbers as Python floats
    hs = torch.tensor([3.0, 10.0, 57.0], dtype=torch.float64)
    ws = torch.tensor([8.0, 10.0, 2.0], dtype=torch.float64)
    rt = gaussian_radius((hs, ws), 0.3)
    assert rt.tolist() == [gaussian_radius((a, b), 0.3) for a, b in zip(hs.tolist(), ws.tolist())]


def test_gaussian_kernel_closed_form():
    k = gaussian_kernel(2)
    sigma = 5 / 6
    assert k.shape == (5, 5) and k[2, 2] == 1
    torch.testing.assert_close(k[2, 4], torch.tensor(math.exp(-4 / (2 * sigma**2))))
    assert torch.equal(gaussian_kernel(0), torch.ones(1, 1))


def test_draw_gaussian_keeps_maximum_and_clips():
    heat = torch.zeros(6, 7)
    heat[0, 0] = 0.99
    draw_gaussian(heat, (1, 0), 2)
    assert heat[0, 1] == 1 and heat[0, 0] == 0.99
    assert heat[:, 4:].sum() == 0 and heat[3:].sum() == 0
    with pytest.raises(ValueError, match="center"):
        draw_gaussian(heat, (7, 0), 1)


def test_targets_closed_form_single_box():
    boxes = [torch.tensor([[8.0, 12.0, 40.0, 36.0]])]
    t = cornernet_targets(boxes, [torch.tensor([2])], (1, 3, 16, 16), (64, 64), 3)
    assert t["tl_heat"].shape == (1, 3, 16, 16) and t["tl_off"].shape == (1, 2, 16, 16)
    assert t["tl_heat"][0, 2, 3, 2] == 1 and t["br_heat"][0, 2, 9, 10] == 1
    assert t["tl_heat"][0, :2].sum() == 0 and t["tl_heat"].eq(1).sum() == 1
    assert t["corners"][0].tolist() == [[3, 2, 9, 10]]
    assert t["tl_off"].abs().sum() == 0  # corners fall exactly on cells


def test_empty_ground_truth_losses_finite_and_embedding_zero():
    torch.manual_seed(0)
    head = CornerNetHead(NUM_CLASSES, IN_CH)
    feats = [torch.randn(2, IN_CH, 16, 16) for _ in range(2)]
    out = head(feats)
    boxes = [torch.zeros(0, 4), torch.zeros(0, 4)]
    labels = [torch.zeros(0, dtype=torch.long)] * 2
    t = cornernet_targets(boxes, labels, FEAT, IMG, NUM_CLASSES)
    assert t["tl_heat"].sum() == 0 and all(c.shape == (0, 4) for c in t["corners"])
    losses = cornernet_loss(out, t)
    for values in losses.values():
        assert len(values) == 2
        for v in values:
            assert torch.isfinite(v)
    assert all(v == 0 for v in losses["pull_loss"] + losses["push_loss"] + losses["off_loss"])
    assert all(v > 0 for v in losses["det_loss"])
    total = sum(sum(v) for v in losses.values())
    total.backward()
    assert head.levels[0].tl_heat.out.bias.grad is not None


def test_pull_push_closed_form():
    tl = torch.zeros(1, 1, 4, 4)
    br = torch.zeros(1, 1, 4, 4)
    tl[0, 0, 0, 0], br[0, 0, 2, 2] = 0.0, 0.5  # object A: mean 0.25
    tl[0, 0, 1, 0], br[0, 0, 3, 3] = 0.6, 0.8  # object B: mean 0.7
    corners = [torch.tensor([[0, 0, 2, 2], [1, 0, 3, 3]])]
    pull, push = associative_embedding_loss(tl, br, corners)
    want_pull = (0.25**2 * 2 + 0.1**2 * 2) / 2
    want_push = 2 * (1 - 0.45) / 2
    torch.testing.assert_close(pull, torch.tensor(want_pull))
    torch.testing.assert_close(push, torch.tensor(want_push))


def test_head_outputs_and_prior_bias():
    head = CornerNetHead(NUM_CLASSES, IN_CH, num_feat_levels=2, corner_emb_channels=1)
    out = head([torch.randn(2, IN_CH, 10, 12) for _ in range(2)])
    assert set(out) == set(OUTPUT_KEYS)
    assert [t.shape for t in out["tl_heat"]] == [(2, NUM_CLASSES, 10, 12)] * 2
    assert [t.shape for t in out["br_emb"]] == [(2, 1, 10, 12)] * 2
    assert [t.shape for t in out["tl_off"]] == [(2, 2, 10, 12)] * 2
    bias = head.levels[1].br_heat.out.bias
    torch.testing.assert_close(bias.sigmoid(), torch.full_like(bias, 0.1))
    no_emb = CornerNetHead(NUM_CLASSES, IN_CH, corner_emb_channels=0)
    out = no_emb([torch.randn(1, IN_CH, 4, 4)] * 2)
    assert out["tl_emb"] == [None, None]


def test_decode_shapes_and_rejection():
    b, c, h, w = 1, 2, 8, 8
    tl = torch.zeros(b, c, h, w)
    br = torch.zeros(b, c, h, w)
    tl[0, 1, 1, 2] = 0.9  # top-left corner at (x=2, y=1), class 1
    br[0, 1, 5, 6] = 0.7  # bottom-right at (x=6, y=5), class 1
    br[0, 0, 6, 7] = 0.8  # other class: must not pair
    emb = torch.zeros(b, 1, h, w)
    off = torch.zeros(b, 2, h, w)
    boxes, scores, labels = decode_corners(tl, br, emb, emb, off, off, (32, 32), k=3, num_dets=4)
    assert boxes.shape == (1, 4, 4) and scores.shape == (1, 4) and labels.shape == (1, 4)
    torch.testing.assert_close(scores[0, 0], torch.tensor(0.8))
    torch.testing.assert_close(boxes[0, 0], torch.tensor([8.0, 4.0, 24.0, 20.0]))
    assert labels[0, 0] == 1
    # the class-0 corner (0.8) never pairs with the class-1 corner (0.9): no 0.85 score; the
    # remaining candidates use zero-score corners, so they score at most 0.9 / 2
    assert not torch.isclose(scores, torch.tensor(0.85)).any()
    assert (scores[0, 1:] <= 0.45 + 1e-6).all()


def test_bad_input_raises():
    head = CornerNetHead(NUM_CLASSES, IN_CH)
    with pytest.raises(ValueError, match="feats"):
        head([torch.randn(1, IN_CH, 4, 4)])
    with pytest.raises(ValueError, match=r"feats\[0\]"):
        head([torch.randn(1, IN_CH + 1, 4, 4)] * 2)
    with pytest.raises(ValueError, match="gt_boxes"):
        cornernet_targets([torch.zeros(2, 5)], [torch.zeros(2, dtype=torch.long)], (16, 16), IMG, 3)
    with pytest.raises(ValueError, match="gt_labels"):
        cornernet_targets([torch.zeros(2, 4)], [torch.zeros(3, dtype=torch.long)], (16, 16), IMG, 3)
    with pytest.raises(ValueError, match="gt_labels"):
        cornernet_targets([torch.zeros(1, 4)], [torch.tensor([3])], (16, 16), IMG, 3)
    with pytest.raises(ValueError, match="feat_shape"):
        cornernet_targets([torch.zeros(1, 4)], [torch.tensor([0])], (16,), IMG, 3)
    z = torch.zeros(1, 3, 4, 4)
    e = torch.zeros(1, 1, 4, 4)
    o = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="br_heat"):
        decode_corners(z, torch.zeros(1, 3, 4, 5), e, e, o, o, IMG)
    with pytest.raises(ValueError, match="tl_off"):
        decode_corners(z, z, e, e, torch.zeros(1, 3, 4, 4), o, IMG)
    with pytest.raises(ValueError, match="kernel"):
        decode_corners(z, z, e, e, o, o, IMG, kernel=2)
    with pytest.raises(ValueError, match="outputs"):
        cornernet_loss({}, {})


def test_converter_round_trip_and_strictness():
    net = CornerNet(NUM_CLASSES, HourglassNet(**HOURGLASS_TINY))
    sd = net.state_dict()
    mm = to_mmdet_cornernet_state_dict(sd)
    assert all(k.startswith(("backbone.", "bbox_head.")) for k in mm)
    assert "bbox_head.tl_pool.1.direction1_conv.conv.weight" in mm
    assert "bbox_head.br_heat.0.1.conv.bias" in mm
    assert "backbone.stem.1.0.downsample.1.running_var" in mm
    back = convert_mmdet_cornernet_state_dict({"state_dict": mm, "meta": {}})
    assert list(back) == list(sd) and all(back[k] is sd[k] for k in sd)
    with pytest.raises(ValueError, match="data_preprocessor"):
        convert_mmdet_cornernet_state_dict({**mm, "data_preprocessor.mean": torch.zeros(3)})
    assert (
        convert_mmdet_cornernet_state_dict({**mm, "x.y": torch.zeros(1)}, strict=False).keys()
        == sd.keys()
    )


# ----------------------------------------------------------------------- reference: mmdet 3.3
@pytest.fixture(scope="module")
def mm():
    import mmcv.ops  # noqa: F401  (installed by tools/setup_env.sh; fail loudly if broken)
    import mmdet  # noqa: F401  (installed by tools/setup_env.sh; fail loudly if broken)
    from mmdet.utils import register_all_modules

    register_all_modules()
    from mmdet.models.dense_heads import CornerHead
    from mmdet.models.losses import AssociativeEmbeddingLoss
    from mmdet.models.utils import gaussian_radius as mm_radius
    from mmdet.models.utils import gen_gaussian_target
    from mmengine.config import ConfigDict
    from mmengine.structures import InstanceData

    return dict(
        CornerHead=CornerHead,
        AssociativeEmbeddingLoss=AssociativeEmbeddingLoss,
        gaussian_radius=mm_radius,
        gen_gaussian_target=gen_gaussian_target,
        ConfigDict=ConfigDict,
        InstanceData=InstanceData,
    )


def _mm_head(mm, emb=1):
    torch.manual_seed(0)
    head = mm["CornerHead"](
        num_classes=NUM_CLASSES,
        in_channels=IN_CH,
        num_feat_levels=2,
        corner_emb_channels=emb,
        loss_embedding=dict(type="AssociativeEmbeddingLoss", pull_weight=0.1, push_weight=0.1),
        test_cfg=mm["ConfigDict"](
            corner_topk=100,
            local_maximum_kernel=3,
            distance_threshold=0.5,
            score_thr=0.05,
            max_per_img=100,
            nms=dict(type="soft_nms", iou_threshold=0.5, method="gaussian"),
        ),
    )
    _randomise_(head, seed=1)
    return head


def _our_head_from(mm_head, emb=1):
    ours = CornerNetHead(NUM_CLASSES, IN_CH, num_feat_levels=2, corner_emb_channels=emb)
    sd = {"bbox_head." + k: v for k, v in mm_head.state_dict().items()}
    mapped = convert_mmdet_cornernet_state_dict(sd)
    ours.load_state_dict({k[len("head.") :]: v for k, v in mapped.items()}, strict=True)
    return ours


def test_gaussian_radius_matches_mmdet(mm):
    for h in range(0, 70, 3):
        for w in range(0, 70, 4):
            for iou in (0.3, 0.7):
                assert gaussian_radius((h, w), iou) == mm["gaussian_radius"]((h, w), iou)


def test_draw_gaussian_matches_mmdet(mm):
    for (x, y), r in [((5, 5), 3), ((0, 2), 4), ((9, 7), 2), ((3, 0), 0), ((6, 4), 11)]:
        base = torch.rand(8, 10, generator=torch.Generator().manual_seed(r)) * 0.5
        want = mm["gen_gaussian_target"](base.clone(), [x, y], r)
        got = draw_gaussian(base.clone(), (x, y), r)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)


def test_targets_match_mmdet(mm):
    head = _mm_head(mm)
    boxes, labels = _gt()
    want = head.get_targets(boxes, labels, FEAT, IMG, with_corner_emb=True)
    got = cornernet_targets(boxes, labels, FEAT, IMG, NUM_CLASSES)
    for ours, theirs in [
        ("tl_heat", "topleft_heatmap"),
        ("br_heat", "bottomright_heatmap"),
        ("tl_off", "topleft_offset"),
        ("br_off", "bottomright_offset"),
    ]:
        torch.testing.assert_close(got[ours], want[theirs], rtol=0, atol=1e-7)
    # peaks (exactly 1) must coincide: they drive the loss normalisers and offset masks
    assert torch.equal(got["tl_heat"].eq(1), want["topleft_heatmap"].eq(1))
    assert torch.equal(got["br_heat"].eq(1), want["bottomright_heatmap"].eq(1))
    match = [[[a, b], [c, d]] for a, b, c, d in got["corners"][0].tolist()]
    assert match == want["corner_embedding"][0]
    assert [c.tolist() for c in got["corners"][1]] == [
        [a, b, c, d] for (a, b), (c, d) in want["corner_embedding"][1]
    ]


@pytest.mark.parametrize("train", [False, True])
def test_head_forward_matches_mmdet(mm, train):
    ref = _mm_head(mm)
    ours = _our_head_from(ref)
    ref.train(train)
    ours.train(train)
    feats = [
        torch.randn(2, IN_CH, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)
    ]
    want = ref(feats)
    got = ours(feats)
    for idx, key in enumerate(OUTPUT_KEYS):
        assert len(got[key]) == len(want[idx]) == 2
        for a, b in zip(got[key], want[idx]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_associative_embedding_matches_mmdet(mm):
    g = torch.Generator().manual_seed(3)
    ref = mm["AssociativeEmbeddingLoss"](pull_weight=0.1, push_weight=0.1)
    for m in (1, 2):
        tl = torch.randn(2, m, 16, 16, generator=g) * 0.5
        br = torch.randn(2, m, 16, 16, generator=g) * 0.5
        boxes, labels = _gt(seed=m)
        boxes[1] = boxes[1][:1]  # one object: push must be 0
        labels[1] = labels[1][:1]
        t = cornernet_targets(boxes, labels, FEAT, IMG, NUM_CLASSES)
        match = [[[[a, b], [c, d]] for a, b, c, d in cs.tolist()] for cs in t["corners"]]
        want = ref(tl, br, match)
        got = associative_embedding_loss(tl, br, t["corners"], 0.1, 0.1)
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-7)
    empty = [torch.zeros(0, 4, dtype=torch.long)] * 2
    pull, push = associative_embedding_loss(tl, br, empty, 0.1, 0.1)
    want = ref(tl, br, [[], []])
    assert pull == want[0] == 0 and push == want[1] == 0


@pytest.mark.parametrize("empty_image", [False, True])
def test_loss_matches_mmdet(mm, empty_image):
    ref = _mm_head(mm)
    feats = [
        torch.randn(2, IN_CH, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)
    ]
    outs_ref = ref(feats)
    outs = {
        k: [t.detach().clone().requires_grad_(True) for t in v]
        for k, v in zip(OUTPUT_KEYS, outs_ref)
    }
    ref_in = [[t.detach().clone().requires_grad_(True) for t in v] for v in outs_ref]
    boxes, labels = _gt()
    if empty_image:
        boxes[1], labels[1] = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    gts = [mm["InstanceData"](bboxes=b, labels=lab) for b, lab in zip(boxes, labels)]
    metas = [dict(batch_input_shape=IMG, img_shape=IMG, pad_shape=IMG)] * 2
    want = ref.loss_by_feat(*ref_in, gts, metas)
    got = cornernet_loss(outs, cornernet_targets(boxes, labels, FEAT, IMG, NUM_CLASSES))
    assert set(got) == set(want) == {"det_loss", "off_loss", "pull_loss", "push_loss"}
    for key in want:
        for a, b in zip(got[key], want[key], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # gradients with respect to every head output agree as well
    sum(sum(v) for v in got.values()).backward()
    sum(sum(v) for v in want.values()).backward()
    for key, theirs in zip(OUTPUT_KEYS, ref_in):
        for a, b in zip(outs[key], theirs):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    summed = cornernet_loss(
        outs, cornernet_targets(boxes, labels, FEAT, IMG, NUM_CLASSES), sum_levels=True
    )
    torch.testing.assert_close(summed["det_loss"], want["det_loss"][0] + want["det_loss"][1])


@pytest.mark.parametrize("ties", [False, True])
def test_decode_matches_mmdet(mm, ties):
    ref = _mm_head(mm)
    g = torch.Generator().manual_seed(4)
    maps = [
        torch.randn(2, NUM_CLASSES, 16, 16, generator=g) * 3,
        torch.randn(2, NUM_CLASSES, 16, 16, generator=g) * 3,
        torch.randn(2, 1, 16, 16, generator=g) * 0.4,
        torch.randn(2, 1, 16, 16, generator=g) * 0.4,
        torch.rand(2, 2, 16, 16, generator=g),
        torch.rand(2, 2, 16, 16, generator=g),
    ]
    if ties:  # coarse heatmaps and offsets: many equal scores and coordinates
        maps[0], maps[1] = maps[0].round(), maps[1].round()
        maps[4], maps[5] = (maps[4] * 2).round() / 2, (maps[5] * 2).round() / 2
    tl_heat, br_heat, tl_emb, br_emb, tl_off, br_off = maps
    for k, num_dets in [(100, 1000), (20, 50)]:
        boxes, scores, labels = decode_corners(
            tl_heat,
            br_heat,
            tl_emb,
            br_emb,
            tl_off,
            br_off,
            IMG,
            k=k,
            num_dets=num_dets,
            heat_logits=True,
        )
        assert boxes.shape == (2, num_dets, 4) and labels.dtype == torch.long
        assert (scores > 0).any()
        for i in range(2):
            sl = slice(i, i + 1)
            wb, ws, wc = ref._decode_heatmap(
                tl_heat=tl_heat[sl].sigmoid(),
                br_heat=br_heat[sl].sigmoid(),
                tl_off=tl_off[sl],
                br_off=br_off[sl],
                tl_emb=tl_emb[sl],
                br_emb=br_emb[sl],
                img_meta=dict(batch_input_shape=IMG),
                k=k,
                kernel=3,
                distance_threshold=0.5,
                num_dets=num_dets,
            )
            torch.testing.assert_close(scores[i], ws[0, :, 0], rtol=0, atol=0)
            torch.testing.assert_close(boxes[i], wb[0], rtol=0, atol=1e-6)
            assert torch.equal(labels[i], wc[0, :, 0].long())


def test_detector_state_dict_matches_mmdet(mm):
    from mmdet.registry import MODELS

    cfg = dict(
        type="CornerNet",
        backbone=dict(type="HourglassNet", **HOURGLASS_TINY),
        neck=None,
        bbox_head=dict(
            type="CornerHead", num_classes=NUM_CLASSES, in_channels=8, num_feat_levels=2
        ),
    )
    torch.manual_seed(0)
    ref = MODELS.build(cfg)
    _randomise_(ref, seed=5)
    ours = CornerNet(NUM_CLASSES, HourglassNet(**HOURGLASS_TINY))
    ours.load_state_dict(convert_mmdet_cornernet_state_dict(ref.state_dict()), strict=True)
    back = to_mmdet_cornernet_state_dict(ours.state_dict())
    assert back.keys() == ref.state_dict().keys()
    ref.eval()
    ours.eval()
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(6))
    want = ref.bbox_head(ref.backbone(x))
    got = ours(x)
    for idx, key in enumerate(OUTPUT_KEYS):
        for a, b in zip(got[key], want[idx]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_channels_last_equals_nchw_in_float64():
    """The channels-last default computes the same function as NCHW: forward and every
    parameter gradient agree in float64, outputs are contiguous NCHW, state dicts load
    across."""

    def build(channels_last: bool) -> CornerNet:
        torch.manual_seed(0)
        body = HourglassNet(**HOURGLASS_TINY, channels_last=channels_last)
        net = CornerNet(NUM_CLASSES, body)
        net.head = CornerNetHead(
            NUM_CLASSES, body.feat_channel, 2, pool_channels=8, hidden_channels=8,
            channels_last=channels_last,
        )  # fmt: skip
        return net.double()

    nchw, cl = build(False), build(True)
    assert cl.backbone.stem[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    cl.load_state_dict(nchw.state_dict(), strict=True)
    x = torch.randn(2, 3, 63, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    results = []
    for net in (nchw, cl):
        out = net(x)
        total = 0
        for key in OUTPUT_KEYS:
            for i, v in enumerate(out[key]):
                assert v.is_contiguous(), (key, i)
                weight = torch.linspace(-1, 1, v.numel(), dtype=v.dtype).view_as(v)
                total = total + (v * weight).sum()
        total.backward()
        results.append((out, {k: p.grad for k, p in net.named_parameters()}))
    (out_a, grad_a), (out_b, grad_b) = results
    for key in OUTPUT_KEYS:
        for a, b in zip(out_a[key], out_b[key]):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    for name, g in grad_a.items():
        torch.testing.assert_close(grad_b[name], g, rtol=1e-9, atol=1e-11, msg=name)
