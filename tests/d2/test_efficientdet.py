"""Detectron2 EfficientDet adapter: backbone, label assignment, losses, inference, Soft-NMS."""

from __future__ import annotations

import plugins.d2  # noqa: F401  (first: detectron2._C stand-in)

# isort: split
import pytest
import torch
import torch.nn.functional as F
import torchvision
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from plugins.core.anchors import generate_anchors
from plugins.core.box_coder import encode_boxes
from plugins.core.soft_nms import batched_soft_nms
from plugins.d2 import add_plugins_config
from plugins.d2.efficientdet import EfficientNetBiFPN

NUM_CLASSES = 3


pytestmark = pytest.mark.usefixtures("single_thread")


def make_cfg(**overrides):
    cfg = get_cfg()
    add_plugins_config(cfg)
    cfg.merge_from_list(
        [
            "MODEL.META_ARCHITECTURE", "EfficientDet",
            "MODEL.BACKBONE.NAME", "build_efficientnet_bifpn_backbone",
            "MODEL.EFFICIENTDET.VARIANT", "efficientdet_test",
            "MODEL.EFFICIENTDET.NUM_CLASSES", NUM_CLASSES,
            "MODEL.DEVICE", "cpu",
            "INPUT.FORMAT", "RGB",
        ]
    )  # fmt: skip
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def make_input(boxes, classes, size=(128, 96), seed=0):
    g = torch.Generator().manual_seed(seed)
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return {"image": torch.rand(3, *size, generator=g) * 255, "instances": inst}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(make_cfg())


def test_backbone_is_a_detectron2_backbone(model):
    bb = model.backbone
    assert isinstance(bb, EfficientNetBiFPN)
    shapes = bb.output_shape()
    assert list(shapes) == ["p3", "p4", "p5", "p6", "p7"]
    assert [s.stride for s in shapes.values()] == [8, 16, 32, 64, 128]
    assert {s.channels for s in shapes.values()} == {16}  # efficientdet_test BiFPN width
    assert bb.size_divisibility == 128
    out = bb(torch.randn(1, 3, 128, 256))
    for name, t in out.items():
        s = shapes[name].stride
        assert tuple(t.shape) == (1, 16, 128 // s if s <= 128 else 1, 256 // s)


def test_state_dict_prefixes(model):
    prefixes = {".".join(k.split(".")[:2]) for k in model.state_dict()}
    assert prefixes == {"backbone.body", "backbone.fpn", "head.class_net", "head.box_net"}


def test_label_assignment_matches_iou_rule(model):
    anchors = Boxes(
        generate_anchors((128, 128), 3, 7, 3, ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4)), 4.0)
    )
    gt = Instances((128, 128))
    gt.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 60.0, 50.0], [70.0, 64.0, 126.0, 127.0]]))
    gt.gt_classes = torch.tensor([2, 0])
    labels, boxes = model.label_anchors(anchors, [gt])
    iou = pairwise_iou(gt.gt_boxes, anchors)  # (G, R)
    best_iou, best_gt = iou.max(0)
    expected = torch.where(best_iou >= 0.5, gt.gt_classes[best_gt], NUM_CLASSES)
    # low-quality matches: each ground truth also owns its best anchor(s)
    for g in range(2):
        top = iou[g] == iou[g].max()
        expected[top] = gt.gt_classes[best_gt[top]]
    assert torch.equal(labels[0], expected)
    assert (labels[0] != NUM_CLASSES).sum() >= 2
    fg = labels[0] != NUM_CLASSES
    assert torch.equal(boxes[0][fg], gt.gt_boxes.tensor[best_gt[fg]])


def test_losses_match_reference_formulas(model):
    """Focal (torchvision) / (num_pos + 1) and 50 x Huber (torch) / (4 (num_pos + 1))."""
    torch.manual_seed(1)
    n, r, k = 2, 50, NUM_CLASSES
    anchors = Boxes(torch.tensor([[0.0, 0.0, 20.0, 20.0]]).repeat(r, 1) + torch.arange(r)[:, None])
    logits = torch.randn(n, r, k)
    codes = torch.randn(n, r, 4) * 0.1
    labels = torch.randint(0, k + 1, (n, r))
    labels[0, :3] = -1  # ignored
    gt_boxes = anchors.tensor[None].repeat(n, 1, 1) + torch.rand(n, r, 4) * 4
    with EventStorage():
        out = model.losses(anchors, logits, labels, codes, gt_boxes)
    valid, pos = labels >= 0, (labels >= 0) & (labels < k)
    norm = pos.sum().item() + 1.0
    target = F.one_hot(labels[valid], k + 1)[:, :k].float()
    ref_cls = torchvision.ops.sigmoid_focal_loss(
        logits[valid], target, alpha=0.25, gamma=1.5, reduction="sum"
    )
    tcodes = encode_boxes(gt_boxes[pos], anchors.tensor[None].expand(n, r, 4)[pos])
    ref_box = F.huber_loss(codes[pos], tcodes, delta=0.1, reduction="sum")
    torch.testing.assert_close(out["loss_cls"], ref_cls / norm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_box_reg"], 50 * ref_box / (4 * norm), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"MODEL.EFFICIENTDET.CLS_LOSS_TYPE": "alpha_balanced_bce"},
        {"MODEL.EFFICIENTDET.BOX_LOSS_TYPE": "smooth_l1"},
    ],
)
def test_training_step_finite_with_empty_image(overrides):
    torch.manual_seed(0)
    m = build_model(make_cfg(**overrides))
    m.train()
    batch = [
        make_input([[10, 12, 60, 70], [40, 5, 90, 50]], [0, 2], seed=1),
        make_input([], [], seed=2),  # no boxes
    ]
    with EventStorage():
        losses = m(batch)
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    for v in losses.values():
        assert torch.isfinite(v) and v > 0
    sum(losses.values()).backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_alpha_balanced_bce_equals_focal_gamma_zero():
    torch.manual_seed(0)
    a = build_model(make_cfg(**{"MODEL.EFFICIENTDET.CLS_LOSS_TYPE": "alpha_balanced_bce"}))
    b = build_model(make_cfg(**{"MODEL.EFFICIENTDET.FOCAL_LOSS_GAMMA": 0.0}))
    b.load_state_dict(a.state_dict())
    batch = [make_input([[10, 12, 60, 70]], [1], seed=3), make_input([[5, 5, 40, 30]], [0], seed=4)]
    a.train(), b.train()
    with EventStorage():
        la, lb = a(batch), b(batch)
    torch.testing.assert_close(la["loss_cls"], lb["loss_cls"])
    # and gamma 1.5 (the default) gives a different value
    c = build_model(make_cfg())
    c.load_state_dict(a.state_dict())
    c.train()
    with EventStorage():
        lc = c(batch)
    assert not torch.allclose(lc["loss_cls"], la["loss_cls"])


def test_inference_instances_inside_requested_size():
    torch.manual_seed(0)
    m = build_model(make_cfg(**{"MODEL.EFFICIENTDET.SCORE_THRESH_TEST": 0.0}))
    m.eval()
    with torch.no_grad():
        out = m(
            [
                {"image": torch.rand(3, 128, 96) * 255, "height": 256, "width": 192},
                {"image": torch.rand(3, 100, 128) * 255},
            ]
        )
    for res, (h, w) in zip(out, [(256, 192), (100, 128)]):
        inst = res["instances"]
        assert inst.image_size == (h, w)
        assert 0 < len(inst) <= 100
        b = inst.pred_boxes.tensor
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
        assert ((inst.pred_classes >= 0) & (inst.pred_classes < NUM_CLASSES)).all()
        assert torch.all(inst.scores[:-1] >= inst.scores[1:])


def _candidates(m, image):
    """The model's pre-NMS candidates for one image (decoded and clipped)."""
    images = ImageList.from_tensors([(image - m.pixel_mean) / m.pixel_std], 128)
    feats = m.backbone(images.tensor)
    feats = [feats[f] for f in m.head_in_features]
    logits, codes = m._transpose_dense_predictions(m.head(feats), [m.num_classes, 4])
    anchors = m._anchors_per_level(images, feats)
    pred = m._decode_multi_level_predictions(
        anchors,
        [x[0].sigmoid() for x in logits],
        [x[0] for x in codes],
        m.test_score_thresh,
        m.test_topk_candidates,
        images.image_sizes[0],
    )
    pred.pred_boxes.clip(images.image_sizes[0])
    return pred


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_switch_uses_core_soft_nms(method):
    torch.manual_seed(0)
    cfg = make_cfg(
        **{
            "MODEL.EFFICIENTDET.SCORE_THRESH_TEST": 0.0,
            "MODEL.EFFICIENTDET.TOPK_CANDIDATES_TEST": 50,
            "MODEL.NMS.TYPE": method,
            "MODEL.NMS.SIGMA": 0.5,
            "MODEL.NMS.IOU_THRESHOLD": 0.3,
            "MODEL.NMS.SCORE_THRESHOLD": 0.001,
        }
    )
    m = build_model(cfg)
    m.eval()
    image = torch.rand(3, 128, 128) * 255
    with torch.no_grad():
        out = m([{"image": image}])[0]["instances"]
        pred = _candidates(m, image)
    keep, scores = batched_soft_nms(
        pred.pred_boxes.tensor,
        pred.scores,
        pred.pred_classes,
        method=method,
        sigma=0.5,
        iou_threshold=0.3,
        score_threshold=0.001,
        max_detections=100,
    )
    # detector_postprocess drops boxes left empty by the clipping
    nonempty = pred.pred_boxes[keep].nonempty()
    keep, scores = keep[nonempty], scores[nonempty]
    assert len(out) == len(keep) > 0
    torch.testing.assert_close(out.pred_boxes.tensor, pred.pred_boxes.tensor[keep])
    torch.testing.assert_close(out.scores, scores)
    assert torch.equal(out.pred_classes, pred.pred_classes[keep])
    # decayed scores: some kept scores are not any candidate's raw score
    raw = pred.scores[keep]
    assert (out.scores < raw - 1e-7).any()
