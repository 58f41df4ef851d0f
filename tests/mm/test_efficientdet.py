"""EfficientDet and RetinaNet in mmdet with the plugins' components (tiny variants, CPU)."""

from __future__ import annotations

import copy

import mmdet.models  # noqa: F401  (installed by tools/setup_env.sh; fail loudly if broken)
import pytest
import torch
from mmcv.ops import soft_nms as mmcv_soft_nms  # noqa: E402
from mmdet.registry import MODELS, TASK_UTILS  # noqa: E402
from mmdet.testing import demo_mm_inputs  # noqa: E402
from mmengine.config import ConfigDict  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import plugins.mm  # noqa: E402,F401
from plugins.core.anchors import generate_anchors  # noqa: E402
from plugins.core.box_coder import encode_boxes  # noqa: E402
from plugins.core.efficientdet import EfficientDet  # noqa: E402
from plugins.core.variants import EFFICIENTDET_VARIANTS  # noqa: E402
from plugins.mm.soft_nms import plugins_batched_soft_nms  # noqa: E402

VARIANT = "efficientdet_test"
NUM_CLASSES = 5


def _detector_cfg(variant=VARIANT, num_classes=NUM_CLASSES, nms=None) -> ConfigDict:
    nms = nms or dict(type="plugins_soft_nms", method="gaussian", sigma=0.5, min_score=0.001)
    return ConfigDict(
        type="PluginsEfficientDet",
        data_preprocessor=dict(
            type="DetDataPreprocessor",
            mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375],
            bgr_to_rgb=True,
            pad_size_divisor=128,
        ),
        backbone=dict(type="PluginsEfficientNet", variant=variant),
        neck=dict(type="PluginsBiFPN", variant=variant),
        bbox_head=dict(type="PluginsEfficientDetHead", variant=variant, num_classes=num_classes),
        train_cfg=dict(
            assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0),
            sampler=dict(type="PseudoSampler"),
            allowed_border=-1,
            pos_weight=-1,
            debug=False,
        ),
        test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.0, nms=nms, max_per_img=100),
    )


@pytest.fixture(scope="module")
def detector():
    init_default_scope("mmdet")
    torch.manual_seed(0)
    return MODELS.build(_detector_cfg())


def _batch(model, training: bool, shapes=((3, 128, 128), (3, 96, 160)), items=(4, 0)):
    packed = demo_mm_inputs(
        batch_size=len(shapes),
        image_shapes=list(shapes),
        num_items=list(items),
        num_classes=NUM_CLASSES,
    )
    return model.data_preprocessor(packed, training)


def test_core_modules_live_under_the_shared_prefixes(detector):
    core = EfficientDet(VARIANT, num_classes=NUM_CLASSES)
    swap = {
        "backbone.": "backbone.body.",
        "fpn.": "neck.fpn.",
        "class_net.": "bbox_head.class_net.",
        "box_net.": "bbox_head.box_net.",
    }

    def renamed(key: str) -> str:
        for old, new in swap.items():
            if key.startswith(old):
                return new + key[len(old) :]
        raise AssertionError(key)

    core_sd = {renamed(k): v for k, v in core.state_dict().items()}
    mm_sd = detector.state_dict()
    assert set(core_sd) == set(mm_sd)
    assert all(core_sd[k].shape == mm_sd[k].shape for k in core_sd)

    # same weights -> same raw outputs
    model = copy.deepcopy(detector).eval()
    model.load_state_dict(core_sd)
    core.eval()
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cls_ref, box_ref = core(x)
        cls_mm, box_mm = model.bbox_head(model.extract_feat(x))
    for a, b in zip(cls_ref + box_ref, cls_mm + box_mm):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # thread-order rounding


def test_anchors_equal_core_and_match_head_layout(detector):
    gen = detector.bbox_head.prior_generator
    v = EFFICIENTDET_VARIANTS[VARIANT]
    for hw in [(128, 128), (256, 384)]:
        sizes = [
            ((hw[0] + 2**lv - 1) // 2**lv, (hw[1] + 2**lv - 1) // 2**lv)
            for lv in range(v.min_level, v.max_level + 1)
        ]
        ours = torch.cat(gen.grid_priors(sizes))
        ref = generate_anchors(
            hw, v.min_level, v.max_level, v.num_scales, v.aspect_ratios, v.anchor_scale
        )
        torch.testing.assert_close(ours, ref, atol=0, rtol=0)
        detector.eval()
        with torch.no_grad():
            cls_scores, _ = detector.bbox_head(detector.extract_feat(torch.zeros(1, 3, *hw)))
        assert sum(c[0].numel() // NUM_CLASSES for c in cls_scores) == ref.shape[0]
    with pytest.raises(ValueError, match="featmap_sizes"):
        gen.grid_priors([(16, 16), (9, 9), (4, 4), (2, 2), (1, 1)])


def test_box_coder_round_trip_and_core_codes():
    init_default_scope("mmdet")
    coder = TASK_UTILS.build(dict(type="PluginsEfficientDetBoxCoder"))
    g = torch.Generator().manual_seed(2)
    anchors = torch.tensor([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 8.0, 16.0]])
    boxes = anchors + torch.randn(2, 4, generator=g)
    codes = coder.encode(anchors, boxes)
    torch.testing.assert_close(codes, encode_boxes(boxes, anchors))
    torch.testing.assert_close(coder.decode(anchors, codes), boxes, atol=1e-4, rtol=1e-5)
    # huge log-sizes are clamped and the result clipped to the image
    wild = coder.decode(anchors, torch.full((2, 4), 50.0), max_shape=(60, 70))
    assert torch.isfinite(wild).all()
    assert (wild[:, 0::2] <= 70).all() and (wild[:, 1::2] <= 60).all() and (wild >= 0).all()


def test_loss_is_finite_including_an_image_without_boxes(detector):
    detector.train()
    data = _batch(detector, True)
    losses = detector(**data, mode="loss")
    assert set(losses) == {"loss_cls", "loss_bbox"}
    total = sum(sum(v) for v in losses.values())
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    grads = [p.grad for p in detector.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)
    detector.zero_grad()

    # a batch whose every image is empty: classification loss only, box loss zero
    data = _batch(detector, True, shapes=((3, 128, 128),) * 2, items=(0, 0))
    losses = detector(**data, mode="loss")
    assert all(torch.isfinite(v).all() for vs in losses.values() for v in vs)
    assert sum(losses["loss_bbox"]).item() == 0.0


def test_predict_boxes_inside_image_scores_in_unit_interval(detector):
    detector.eval()
    data = _batch(detector, False)
    with torch.no_grad():
        results = detector(**data, mode="predict")
    assert len(results) == 2
    for sample in results:
        pred = sample.pred_instances
        h, w = sample.ori_shape
        assert len(pred) > 0
        assert pred.bboxes.shape == (len(pred), 4)
        assert (pred.bboxes[:, 0::2] >= 0).all() and (pred.bboxes[:, 0::2] <= w).all()
        assert (pred.bboxes[:, 1::2] >= 0).all() and (pred.bboxes[:, 1::2] <= h).all()
        assert (pred.scores >= 0).all() and (pred.scores <= 1).all()
        assert (pred.labels >= 0).all() and (pred.labels < NUM_CLASSES).all()
        assert len(pred) <= 100
        assert (pred.scores[:-1] >= pred.scores[1:]).all()


def test_predict_with_nothing_above_threshold_is_empty(detector):
    detector.eval()
    detector.bbox_head.test_cfg = ConfigDict(
        nms_pre=1000,
        min_bbox_size=0,
        score_thr=1.01,
        nms=dict(type="plugins_soft_nms"),
        max_per_img=100,
    )
    try:
        with torch.no_grad():
            results = detector(**_batch(detector, False), mode="predict")
    finally:
        detector.bbox_head.test_cfg = _detector_cfg().test_cfg
    assert all(len(r.pred_instances) == 0 for r in results)
    assert results[0].pred_instances.bboxes.shape == (0, 4)


def test_soft_nms_equals_mmcv_per_class():
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(40, 2, generator=g) * 50
    boxes = torch.cat((xy, xy + 10 + torch.rand(40, 2, generator=g) * 20), dim=1)
    scores = torch.rand(40, generator=g)
    labels = torch.randint(0, 3, (40,), generator=g)
    cfg = dict(
        type="plugins_soft_nms", method="gaussian", sigma=0.5, iou_threshold=0.3, min_score=0.05
    )
    dets, keep = plugins_batched_soft_nms(boxes, scores, labels, cfg)
    assert dets.shape == (len(keep), 5)
    torch.testing.assert_close(dets[:, :4], boxes[keep])
    for c in range(3):
        m = labels[keep] == c
        idx = torch.nonzero(labels == c).squeeze(1)
        ref_dets, ref_inds = mmcv_soft_nms(
            boxes[idx], scores[idx], iou_threshold=0.3, sigma=0.5, min_score=0.05, method="gaussian"
        )
        assert keep[m].tolist() == idx[ref_inds].tolist()
        torch.testing.assert_close(dets[m, 4], ref_dets[:, 4], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="nms_cfg"):
        plugins_batched_soft_nms(boxes, scores, labels, dict(type="plugins_soft_nms", sigmaa=1))


def _retina_cfg(nms: dict) -> ConfigDict:
    return ConfigDict(
        type="RetinaNet",
        data_preprocessor=dict(
            type="DetDataPreprocessor", mean=[0, 0, 0], std=[255, 255, 255], pad_size_divisor=32
        ),
        backbone=dict(
            type="ResNet", depth=18, num_stages=4, out_indices=(1, 2, 3), norm_eval=False
        ),
        neck=dict(
            type="FPN",
            in_channels=[128, 256, 512],
            out_channels=32,
            start_level=0,
            add_extra_convs="on_input",
            num_outs=5,
        ),
        bbox_head=dict(
            type="PluginsRetinaHead",
            num_classes=NUM_CLASSES,
            in_channels=32,
            feat_channels=32,
            stacked_convs=1,
            anchor_generator=dict(
                type="AnchorGenerator",
                octave_base_scale=4,
                scales_per_octave=3,
                ratios=[0.5, 1.0, 2.0],
                strides=[8, 16, 32, 64, 128],
            ),
            bbox_coder=dict(
                type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4
            ),
            loss_cls=dict(type="PluginsFocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25),
            loss_bbox=dict(type="L1Loss"),
        ),
        train_cfg=dict(
            assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0),
            sampler=dict(type="PseudoSampler"),
            allowed_border=-1,
            pos_weight=-1,
            debug=False,
        ),
        test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.0, nms=nms, max_per_img=100),
    )


def test_retina_head_soft_nms_and_fallback_to_mmcv():
    init_default_scope("mmdet")
    torch.manual_seed(4)
    soft = MODELS.build(
        _retina_cfg(dict(type="plugins_soft_nms", method="gaussian", sigma=0.5, min_score=0.001))
    )
    hard = MODELS.build(_retina_cfg(dict(type="nms", iou_threshold=0.5)))
    hard.load_state_dict(soft.state_dict())
    soft.train()
    losses = soft(**_batch(soft, True), mode="loss")
    assert all(torch.isfinite(v).all() for vs in losses.values() for v in vs)
    soft.eval()
    hard.eval()
    data = _batch(soft, False)
    with torch.no_grad():
        out_soft = soft(**data, mode="predict")
        out_hard = hard(**data, mode="predict")
    for s, h in zip(out_soft, out_hard):
        ps, ph = s.pred_instances, h.pred_instances
        assert (ps.scores >= 0).all() and (ps.scores <= 1).all()
        assert len(ps) > 0 and len(ph) > 0
        # the top box is the same: soft-NMS never decays the highest score
        torch.testing.assert_close(ps.bboxes[0], ph.bboxes[0])
        torch.testing.assert_close(ps.scores[0], ph.scores[0])
