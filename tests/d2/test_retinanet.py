"""RetinaNetPlus: Detectron2's RetinaNet with loss variants and Soft-NMS."""

from __future__ import annotations

import plugins.d2  # noqa: F401  (first: detectron2._C stand-in)

# isort: split
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import RetinaNet, build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from plugins.core.soft_nms import batched_soft_nms
from plugins.d2 import add_plugins_config
from plugins.d2.retinanet import RetinaNetPlus

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
NUM_CLASSES = 4


pytestmark = pytest.mark.usefixtures("single_thread")


def make_cfg(**overrides):
    """R-18 RetinaNetPlus from the repository's base config, tiny and CPU."""
    cfg = get_cfg()
    add_plugins_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, "Base-RetinaNet-Plugins.yaml"))
    cfg.merge_from_list(
        [
            "MODEL.RESNETS.DEPTH", 18,
            "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
            "MODEL.FPN.OUT_CHANNELS", 32,
            "MODEL.RETINANET.NUM_CONVS", 1,
            "MODEL.RETINANET.NUM_CLASSES", NUM_CLASSES,
            "MODEL.DEVICE", "cpu",
        ]
    )  # fmt: skip
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def make_batch():
    g = torch.Generator().manual_seed(0)
    a = Instances((96, 128))
    a.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 20.0, 120.0, 90.0]]))
    a.gt_classes = torch.tensor([1, 3])
    b = Instances((128, 96))  # no boxes
    b.gt_boxes = Boxes(torch.zeros(0, 4))
    b.gt_classes = torch.zeros(0, dtype=torch.int64)
    return [
        {"image": torch.rand(3, 96, 128, generator=g) * 255, "instances": a},
        {"image": torch.rand(3, 128, 96, generator=g) * 255, "instances": b},
    ]


def losses_of(model, batch):
    model.train()
    with EventStorage():
        return model(batch)


@pytest.fixture(scope="module")
def plus():
    torch.manual_seed(0)
    return build_model(make_cfg())


def test_is_registered_subclass(plus):
    assert type(plus) is RetinaNetPlus and isinstance(plus, RetinaNet)


def test_default_losses_equal_detectron2_retinanet(plus):
    """With the defaults RetinaNetPlus computes exactly detectron2's RetinaNet losses."""
    ref = build_model(make_cfg(**{"MODEL.META_ARCHITECTURE": "RetinaNet"}))
    assert type(ref) is RetinaNet
    ref.load_state_dict(plus.state_dict())
    batch = make_batch()
    ours, theirs = losses_of(plus, batch), losses_of(ref, batch)
    assert set(ours) == set(theirs) == {"loss_cls", "loss_box_reg"}
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [
        {"MODEL.RETINANET.CLS_LOSS_TYPE": "alpha_balanced_bce"},
        {"MODEL.RETINANET.BBOX_REG_LOSS_TYPE": "huber", "MODEL.RETINANET.BOX_LOSS_WEIGHT": 2.0},
        {"MODEL.RETINANET.BBOX_REG_LOSS_TYPE": "giou"},
    ],
)
def test_loss_variants_finite_and_backward(plus, overrides):
    m = build_model(make_cfg(**overrides))
    m.load_state_dict(plus.state_dict())
    losses = losses_of(m, make_batch())
    for v in losses.values():
        assert torch.isfinite(v) and v > 0
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_alpha_balanced_bce_equals_gamma_zero_focal(plus):
    a = build_model(make_cfg(**{"MODEL.RETINANET.CLS_LOSS_TYPE": "alpha_balanced_bce"}))
    b = build_model(make_cfg(**{"MODEL.RETINANET.FOCAL_LOSS_GAMMA": 0.0}))
    a.load_state_dict(plus.state_dict())
    b.load_state_dict(plus.state_dict())
    batch = make_batch()
    torch.testing.assert_close(losses_of(a, batch)["loss_cls"], losses_of(b, batch)["loss_cls"])


def test_huber_box_loss_closed_form(plus):
    """Huber on Box2BoxTransform deltas, weighted, divided by the (first-step) normaliser."""
    m = build_model(
        make_cfg(
            **{
                "MODEL.RETINANET.BBOX_REG_LOSS_TYPE": "huber",
                "MODEL.RETINANET.HUBER_DELTA": 0.2,
                "MODEL.RETINANET.BOX_LOSS_WEIGHT": 3.0,
            }
        )
    )
    m.load_state_dict(plus.state_dict())
    torch.manual_seed(0)
    xy = torch.rand(30, 2) * 50
    anchors = [Boxes(torch.cat([xy, xy + 20], 1))]
    logits = [torch.randn(2, 30, NUM_CLASSES)]
    deltas = [torch.randn(2, 30, 4) * 0.1]
    labels = [torch.randint(0, NUM_CLASSES + 1, (30,)) for _ in range(2)]
    gt = [anchors[0].tensor + torch.rand(30, 4) * 5 for _ in range(2)]
    with EventStorage():
        out = m.losses(anchors, logits, labels, deltas, gt)
    pos = torch.stack(labels) < NUM_CLASSES
    targets = torch.stack([m.box2box_transform.get_deltas(anchors[0].tensor, g) for g in gt])
    ref = F.huber_loss(deltas[0][pos], targets[pos], delta=0.2, reduction="sum")
    normalizer = 0.9 * 100 + 0.1 * pos.sum().item()  # detectron2's EMA normaliser, first step
    torch.testing.assert_close(out["loss_box_reg"], 3.0 * ref / normalizer, rtol=1e-5, atol=1e-6)


def _infer(model, image):
    model.eval()
    with torch.no_grad():
        return model([{"image": image, "height": 200, "width": 150}])[0]["instances"]


def test_soft_nms_changes_inference_to_core_soft_nms(plus):
    overrides = {
        "MODEL.RETINANET.SCORE_THRESH_TEST": 0.0,
        "MODEL.RETINANET.TOPK_CANDIDATES_TEST": 40,
        "MODEL.NMS.TYPE": "gaussian",
        "MODEL.NMS.SIGMA": 0.5,
        "MODEL.NMS.SCORE_THRESHOLD": 0.001,
    }
    soft = build_model(make_cfg(**overrides))
    soft.load_state_dict(plus.state_dict())
    image = torch.rand(3, 128, 96, generator=torch.Generator().manual_seed(5)) * 255
    out = _infer(soft, image)

    # candidates as RetinaNet decodes them, then the core Soft-NMS
    captured = {}
    original = soft._decode_multi_level_predictions

    def spy(*args, **kwargs):
        captured["pred"] = original(*args, **kwargs)
        return captured["pred"]

    soft._decode_multi_level_predictions = spy
    _infer(soft, image)
    pred = captured["pred"]
    keep, scores = batched_soft_nms(
        pred.pred_boxes.tensor, pred.scores, pred.pred_classes, "gaussian", 0.5, 0.5, 0.001, 100
    )
    expected = pred[keep]
    raw_scores = expected.scores
    expected.scores = scores
    expected = detector_postprocess(expected, 200, 150)  # rescale, clip, drop empty boxes
    assert len(out) == len(expected) > 0
    torch.testing.assert_close(out.scores, expected.scores)
    torch.testing.assert_close(out.pred_boxes.tensor, expected.pred_boxes.tensor)
    assert (scores < raw_scores - 1e-7).any()  # decayed scores appear

    # boxes inside the requested output size, scores in [0, 1]
    b = out.pred_boxes.tensor
    assert out.image_size == (200, 150)
    assert (b >= 0).all() and (b[:, 0::2] <= 150).all() and (b[:, 1::2] <= 200).all()
    assert ((out.scores >= 0) & (out.scores <= 1)).all()

    # hard NMS (the default) keeps RetinaNet's own inference: no decayed scores
    hard = build_model(make_cfg(**{k: v for k, v in overrides.items() if "NMS" not in k}))
    hard.load_state_dict(plus.state_dict())
    out_hard = _infer(hard, image)
    ref = build_model(
        make_cfg(
            **{k: v for k, v in overrides.items() if "NMS" not in k},
            **{"MODEL.META_ARCHITECTURE": "RetinaNet"},
        )
    )
    ref.load_state_dict(plus.state_dict())
    out_ref = _infer(ref, image)
    torch.testing.assert_close(out_hard.scores, out_ref.scores)
    torch.testing.assert_close(out_hard.pred_boxes.tensor, out_ref.pred_boxes.tensor)
    assert len(out_hard) != len(out) or not torch.allclose(out_hard.scores, out.scores)
