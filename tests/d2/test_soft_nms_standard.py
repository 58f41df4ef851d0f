"""``MODEL.NMS.TYPE`` switches Detectron2's own detectors to the core soft-NMS (plugins.d2.soft_nms).

The shipped configs (configs/soft_nms/*.yaml, inheriting the installed model zoo) are built with
random weights on CPU and run on one image. The core soft-NMS is recorded where the hook calls
it; the detections must be exactly the core's output on those pre-NMS candidates (boxes, order,
decayed scores) cut to ``TEST.DETECTIONS_PER_IMAGE``; masks follow the kept boxes.
"""

from __future__ import annotations

import plugins.d2  # noqa: F401  (first: detectron2._C stand-in, model-zoo paths, the switch)

# isort: split
import importlib
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.model_zoo import get_config_file
from detectron2.modeling import build_model

from plugins.core.soft_nms import batched_soft_nms
from plugins.d2 import add_plugins_config

d2_soft_nms = importlib.import_module("plugins.d2.soft_nms")
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "soft_nms"
SHIPPED = ["faster_rcnn_R_50_FPN_1x", "mask_rcnn_R_50_FPN_1x", "cascade_mask_rcnn_R_50_FPN_1x"]


@pytest.fixture(scope="module", autouse=True)
def _threads(single_thread):
    yield


def _cfg(path: str, *opts):
    cfg = get_cfg()
    add_plugins_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    return cfg


def _confident_(model: torch.nn.Module) -> None:
    """Random classifiers give every class 1/81: one random class distribution for every box,
    so the top classes pass the score threshold; boxes are the (overlapping) anchors."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(("anchor_deltas", "bbox_pred")):  # proposals / boxes = anchors
                module.weight.zero_()
                module.bias.zero_()
            if name.endswith("cls_score"):  # the same for every cascade stage (scores averaged)
                gen = torch.Generator().manual_seed(0)
                module.weight.zero_()  # (random backbone features are huge)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 2.0)


def _image() -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    return [{"image": (torch.rand(3, 128, 160, generator=gen) * 255).round()}]


@pytest.fixture
def recorder(monkeypatch):
    calls = []

    def record(boxes, scores, idxs, *args):
        keep, new = batched_soft_nms(boxes, scores, idxs, *args)
        calls.append((boxes.clone(), scores.clone(), idxs.clone(), args, keep, new))
        return keep, new

    monkeypatch.setattr(d2_soft_nms, "batched_soft_nms", record)
    return calls


def _dense_predict(model: torch.nn.Module):
    """A dense detector's (RetinaNet, FCOS) predictions for :func:`_image`, without
    ``DenseDetector.forward``'s final resize and clip (the boxes as they left the NMS)."""
    with torch.no_grad():
        images = model.preprocess_image(_image())
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        return model.forward_inference(images, features, model.head(features))[0]


def _check_final(pred, call, topk: int) -> None:
    boxes, scores, idxs, args, _, _ = call
    ref_keep, ref_scores = batched_soft_nms(boxes, scores, idxs, *args)
    k = min(ref_keep.numel(), topk)
    assert k > 0 and len(pred) == k
    torch.testing.assert_close(pred.pred_boxes.tensor, boxes[ref_keep[:k]], rtol=0, atol=0)
    torch.testing.assert_close(pred.scores, ref_scores[:k], rtol=0, atol=0)
    assert pred.pred_classes.tolist() == idxs[ref_keep[:k]].tolist()
    assert bool((ref_scores < scores[ref_keep]).any())  # decayed: soft, not hard NMS


def test_shipped_configs_differ_from_the_model_zoo_only_by_the_switch():
    for name in SHIPPED:
        ours = _cfg(str(CONFIGS / f"{name}.yaml"))
        folder = "Misc" if name.startswith("cascade") else "COCO-Detection"
        if name.startswith("mask"):
            folder = "COCO-InstanceSegmentation"
        zoo = _cfg(get_config_file(f"{folder}/{name}.yaml"))
        assert ours.MODEL.NMS.TYPE == "gaussian" and zoo.MODEL.NMS.TYPE == "hard"
        zoo.MODEL.NMS.TYPE = "gaussian"
        assert ours == zoo


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_runs_core_soft_nms(name, recorder):
    cfg = _cfg(str(CONFIGS / f"{name}.yaml"), "MODEL.RPN.POST_NMS_TOPK_TEST", "200")
    model = build_model(cfg).eval()
    _confident_(model)
    with torch.no_grad():
        pred = model.inference(_image(), do_postprocess=False)[0]
    assert len(recorder) == 1  # the ROI heads' final NMS; the RPN stays on hard NMS
    assert recorder[0][3][0] == "gaussian"
    _check_final(pred, recorder[0], cfg.TEST.DETECTIONS_PER_IMAGE)
    if cfg.MODEL.MASK_ON:
        assert pred.pred_masks.shape[0] == len(pred)  # masks follow the kept boxes


def test_rpn_soft_nms_when_asked_and_hard_while_training(recorder):
    cfg = _cfg(str(CONFIGS / "faster_rcnn_R_50_FPN_1x.yaml"), "MODEL.NMS.APPLY_TO_RPN", "True")
    model = build_model(cfg)
    assert isinstance(model.proposal_generator.nms_thresh, d2_soft_nms.SoftNMSThreshold)
    assert float(model.proposal_generator.nms_thresh) == cfg.MODEL.RPN.NMS_THRESH
    model.eval()
    _confident_(model)
    images = model.preprocess_image(_image())
    with torch.no_grad():
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features)
    assert len(recorder) == 1
    boxes, probs, levels, args, keep, new = recorder[0]  # soft-NMS on sigmoid(objectness)
    assert args == ("gaussian", 0.5, cfg.MODEL.NMS.IOU_THRESHOLD, 0.0, -1)
    ref_keep, ref_probs = batched_soft_nms(boxes, probs, levels, *args)
    assert keep.tolist() == ref_keep.tolist()
    top = min(keep.numel(), cfg.MODEL.RPN.POST_NMS_TOPK_TEST)
    torch.testing.assert_close(proposals[0].proposal_boxes.tensor, boxes[ref_keep[:top]])
    torch.testing.assert_close(proposals[0].objectness_logits.sigmoid(), ref_probs[:top])
    assert bool((ref_probs < probs[ref_keep]).any())
    # training proposals: hard NMS (the recorder sees no call)
    rpn = importlib.import_module("detectron2.modeling.proposal_generator.rpn")
    gen = torch.Generator().manual_seed(2)
    xy = torch.rand(1, 300, 2, generator=gen) * 100
    props = [torch.cat([xy, xy + 20], 2)]
    logits = [torch.randn(1, 300, generator=gen)]
    thresh = model.proposal_generator.nms_thresh
    for training, calls in ((True, 1), (False, 2)):
        rpn.find_top_rpn_proposals(props, logits, [(128, 160)], thresh, 300, 100, 0.0, training)
        assert len(recorder) == calls


def test_hard_type_changes_nothing():
    cfg = _cfg(str(CONFIGS / "faster_rcnn_R_50_FPN_1x.yaml"), "MODEL.NMS.TYPE", "hard")
    model = build_model(cfg)
    thresh = model.roi_heads.box_predictor.test_nms_thresh
    assert type(thresh) is float and thresh == cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST


def test_retinanet(recorder):
    # RetinaNet from the yacs model zoo, switched by the config key
    cfg = _cfg(
        get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"), "MODEL.NMS.TYPE", "linear"
    )
    model = build_model(cfg).eval()
    pred = _dense_predict(model)
    assert len(recorder) == 1 and recorder[0][3][0] == "linear"
    boxes, scores, idxs, args, _, _ = recorder[0]
    ref_keep, ref_scores = batched_soft_nms(boxes, scores, idxs, *args)
    k = min(ref_keep.numel(), cfg.TEST.DETECTIONS_PER_IMAGE)
    torch.testing.assert_close(pred.pred_boxes.tensor, boxes[ref_keep[:k]], rtol=0, atol=0)
    torch.testing.assert_close(pred.scores, ref_scores[:k], rtol=0, atol=0)
    # enable_soft_nms on a built model (how LazyConfig models such as FCOS take the switch)
    model = build_model(_cfg(get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml")))
    assert type(model.test_nms_thresh) is float
    assert d2_soft_nms.enable_soft_nms(model, method="gaussian", sigma=0.3) == 1
    assert model.test_nms_thresh.sigma == 0.3 and model.test_nms_thresh == 0.5


def test_fcos_through_enable_soft_nms(recorder):
    # Detectron2's FCOS has no yacs config: built in Python as its LazyConfig does, on the
    # RetinaNet model zoo's P3-P7 backbone, then switched with enable_soft_nms
    from detectron2.modeling.meta_arch.fcos import FCOS, FCOSHead

    backbone = build_model(
        _cfg(get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    ).backbone
    levels = ["p3", "p4", "p5", "p6", "p7"]
    shapes = backbone.output_shape()
    model = FCOS(
        backbone=backbone,
        head=FCOSHead(input_shape=[shapes[f] for f in levels], conv_dims=[32], num_classes=5),
        head_in_features=levels,
        num_classes=5,
        test_score_thresh=0.05,
        pixel_mean=[103.53, 116.28, 123.675],
        pixel_std=[1.0, 1.0, 1.0],
    ).eval()
    _confident_(model)
    with torch.no_grad():  # every point predicts a box 8 strides wide: neighbours overlap
        model.head.bbox_pred.bias.fill_(4.0)
    assert d2_soft_nms.enable_soft_nms(model, method="gaussian", sigma=0.5) == 1
    pred = _dense_predict(model)
    assert len(recorder) == 1 and recorder[0][3][0] == "gaussian"
    _check_final(pred, recorder[0], model.max_detections_per_image)


def test_soft_threshold_survives_copy_and_rejects_bad_settings():
    import copy
    import pickle

    t = d2_soft_nms.SoftNMSThreshold(0.5, method="linear", iou_threshold=0.4)
    for clone in (copy.deepcopy(t), pickle.loads(pickle.dumps(t))):
        assert isinstance(clone, d2_soft_nms.SoftNMSThreshold) and clone == 0.5
        assert (clone.method, clone.iou_threshold) == ("linear", 0.4)
    with pytest.raises(ValueError, match="method"):
        d2_soft_nms.SoftNMSThreshold(0.5, method="softer")
    cfg = _cfg(str(CONFIGS / "faster_rcnn_R_50_FPN_1x.yaml"), "MODEL.NMS.TYPE", "gausian")
    with pytest.raises(ValueError, match="MODEL.NMS.TYPE"):
        build_model(cfg)
