"""One set of weights, two frameworks: Detectron2 <-> MMDetection through tools/convert_checkpoint.py.

For a tiny EfficientDet and a tiny CornerNet: random (perturbed, seeded) weights on one side,
converted by the prefix swap, loaded strictly on the other side, both run in eval mode on the
same image with identical preprocessing (same RGB normalisation, a 128 px image that needs no
padding or resizing on either side) and identical test settings; the detections must agree.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import plugins.d2  # noqa: F401  (first: installs the detectron2._C stand-in when needed)

# isort: split
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.registry import init_default_scope

import plugins.mm  # noqa: F401  (registration)
import plugins.mm.cornernet  # noqa: F401  (registration)
from plugins.core.hourglass import HOURGLASS_TINY
from plugins.d2 import add_plugins_config
from plugins.safe_load import load_checkpoint_file

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 6
SIZE = 128  # multiple of both sides' padding divisor (128 for EfficientDet, 16 here for CornerNet)
MEAN = [123.675, 116.28, 103.53]  # RGB, both sides
STD = [58.395, 57.12, 57.375]
MAX_DETS = 100
BOX_ATOL = 1e-3


def _load_converter():
    spec = importlib.util.spec_from_file_location(
        "convert_checkpoint", REPO / "tools" / "convert_checkpoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert = _load_converter()


# ------------------------------------------------------------------------------------------
# Models with matching settings
# ------------------------------------------------------------------------------------------
def d2_efficientdet():
    cfg = get_cfg()
    add_plugins_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "Base-EfficientDet.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = MEAN, STD
    cfg.INPUT.FORMAT = "RGB"
    node = cfg.MODEL.EFFICIENTDET
    node.VARIANT = "efficientdet_test"
    node.NUM_CLASSES = NUM_CLASSES
    node.SCORE_THRESH_TEST = 0.01  # untrained heads score about 0.01 (prior 0.01)
    node.TOPK_CANDIDATES_TEST = 100
    cfg.MODEL.NMS.TYPE = "gaussian"
    cfg.MODEL.NMS.SIGMA = 0.5
    cfg.MODEL.NMS.IOU_THRESHOLD = 0.5
    cfg.MODEL.NMS.SCORE_THRESHOLD = 0.001
    cfg.MODEL.NMS.MAX_DETECTIONS = MAX_DETS
    return build_model(cfg)


def mm_efficientdet():
    cfg = Config.fromfile(str(REPO / "configs" / "mmdet" / "efficientdet_d0.py"))
    model = copy.deepcopy(cfg.model)
    for part in (
        model.backbone,
        model.neck,
        model.bbox_head,
        model.bbox_head.anchor_generator,
    ):
        part.variant = "efficientdet_test"
    model.bbox_head.num_classes = NUM_CLASSES
    model.data_preprocessor.update(mean=MEAN, std=STD, bgr_to_rgb=True, pad_size_divisor=128)
    model.test_cfg = dict(
        nms_pre=100,
        min_bbox_size=0,
        score_thr=0.01,
        nms=dict(
            type="plugins_soft_nms",
            method="gaussian",
            sigma=0.5,
            iou_threshold=0.5,
            min_score=0.001,
        ),
        max_per_img=MAX_DETS,
    )
    return MODELS.build(model)


def d2_cornernet():
    cfg = get_cfg()
    add_plugins_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "CornerNet"
    cfg.MODEL.BACKBONE.NAME = "build_hourglass_backbone"
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = MEAN, STD
    cfg.INPUT.FORMAT = "RGB"
    hg = cfg.MODEL.HOURGLASS
    hg.DOWNSAMPLE_TIMES = HOURGLASS_TINY["downsample_times"]
    hg.NUM_STACKS = HOURGLASS_TINY["num_stacks"]
    hg.STAGE_CHANNELS = list(HOURGLASS_TINY["stage_channels"])
    hg.STAGE_BLOCKS = list(HOURGLASS_TINY["stage_blocks"])
    hg.FEAT_CHANNELS = HOURGLASS_TINY["feat_channel"]
    cn = cfg.MODEL.CORNERNET
    cn.NUM_CLASSES = NUM_CLASSES
    cn.POOL_CHANNELS, cn.HIDDEN_CHANNELS = 16, 16
    cn.TOPK, cn.LOCAL_MAXIMUM_KERNEL, cn.DISTANCE_THRESHOLD = 50, 3, 0.5
    cn.PRE_NMS_TOPK, cn.SCORE_THRESH_TEST, cn.MAX_DETECTIONS = 1000, 0.0, MAX_DETS
    cn.SOFT_NMS.ENABLED = True
    cn.SOFT_NMS.METHOD, cn.SOFT_NMS.SIGMA = "gaussian", 0.5
    cn.SOFT_NMS.IOU_THRESHOLD, cn.SOFT_NMS.SCORE_THRESHOLD = 0.5, 0.001
    return build_model(cfg)


def mm_cornernet():
    cfg = Config.fromfile(str(REPO / "configs" / "mmdet" / "demo" / "cornernet_shapes.py"))
    model = copy.deepcopy(cfg.model)
    model.data_preprocessor.update(
        mean=MEAN, std=STD, bgr_to_rgb=True, pad_size_divisor=16, batch_augments=None
    )
    model.backbone.update(HOURGLASS_TINY)
    model.bbox_head.update(
        num_classes=NUM_CLASSES,
        in_channels=HOURGLASS_TINY["feat_channel"],
        pool_channels=16,
        hidden_channels=16,
    )
    model.test_cfg = dict(
        corner_topk=50,
        local_maximum_kernel=3,
        distance_threshold=0.5,
        num_dets=1000,
        score_thr=0.0,
        max_per_img=MAX_DETS,
        nms=dict(
            type="plugins_soft_nms",
            method="gaussian",
            sigma=0.5,
            iou_threshold=0.5,
            min_score=0.001,
        ),
    )
    return MODELS.build(model)


BUILDERS = {
    "efficientdet": (d2_efficientdet, mm_efficientdet),
    "cornernet": (d2_cornernet, mm_cornernet),
}


# ------------------------------------------------------------------------------------------
# Running both sides on one image
# ------------------------------------------------------------------------------------------
def make_image() -> torch.Tensor:
    """``(3, SIZE, SIZE)`` uint8 RGB: flat rectangles on a gradient, plus pixel noise (seeded).

    The noise keeps every location distinct, so no two candidates tie in score and the
    top-k / NMS orders are unambiguous on both sides.
    """
    gen = torch.Generator().manual_seed(0)
    ys = torch.linspace(0, 1, SIZE).view(-1, 1)
    xs = torch.linspace(0, 1, SIZE).view(1, -1)
    img = torch.stack([60 + 120 * xs * ys, 90 + 80 * ys + 0 * xs, 150 - 90 * xs + 0 * ys])
    for _ in range(4):
        x0, y0 = torch.randint(0, SIZE - 40, (2,), generator=gen).tolist()
        w, h = torch.randint(12, 40, (2,), generator=gen).tolist()
        colour = torch.randint(0, 256, (3, 1, 1), generator=gen).float()
        img[:, y0 : y0 + h, x0 : x0 + w] = colour
    img = img + torch.randn(img.shape, generator=gen) * 12
    return img.round().clamp(0, 255).to(torch.uint8)


def run_d2(model, image: torch.Tensor):
    model.eval()
    with torch.no_grad():
        inst = model([dict(image=image.float(), height=SIZE, width=SIZE)])[0]["instances"]
    return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


def run_mm(model, image: torch.Tensor):
    model.eval()
    sample = DetDataSample(
        metainfo=dict(
            img_id=0,
            img_shape=(SIZE, SIZE),
            ori_shape=(SIZE, SIZE),
            scale_factor=(1.0, 1.0),
        )
    )
    bgr = image.flip(0).contiguous()  # mmdet loads BGR; bgr_to_rgb=True flips it back
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[bgr], data_samples=[sample]), False)
        pred = model(**data, mode="predict")[0].pred_instances
    return pred.bboxes, pred.scores, pred.labels


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Seeded noise on every float entry (BatchNorm statistics included) for varied outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen) * 0.05
            if name.endswith("running_var"):
                tensor.copy_(1.0 + noise.abs())
            else:
                tensor.add_(noise)


def assert_same_detections(a, b) -> None:
    boxes_a, scores_a, labels_a = a
    boxes_b, scores_b, labels_b = b
    assert len(scores_a) > 0, "no detections: the comparison would be vacuous"
    assert len(scores_a) == len(scores_b)
    torch.testing.assert_close(scores_b, scores_a, rtol=1e-5, atol=1e-6)
    assert torch.equal(labels_a.long(), labels_b.long())
    torch.testing.assert_close(boxes_b, boxes_a, rtol=0, atol=BOX_ATOL)


@pytest.fixture(scope="module", autouse=True)
def _mmdet_scope():
    init_default_scope("mmdet")


@pytest.mark.parametrize("arch", ["efficientdet", "cornernet"])
def test_d2_to_mm(arch, tmp_path):
    build_d2, build_mm = BUILDERS[arch]
    torch.manual_seed(0)
    d2_model = build_d2()
    perturb_(d2_model, seed=2)
    src, dst = tmp_path / "d2.pth", tmp_path / "mm.pth"
    torch.save({"model": d2_model.state_dict(), "iteration": 7}, src)
    assert convert.main([str(src), str(dst)]) == 0
    checkpoint = load_checkpoint_file(dst)
    assert set(checkpoint) == {"state_dict", "meta"}
    assert checkpoint["meta"]["arch"] == arch

    torch.manual_seed(1)
    mm_model = build_mm()
    mm_model.load_state_dict(checkpoint["state_dict"], strict=True)
    image = make_image()
    assert_same_detections(run_d2(d2_model, image), run_mm(mm_model, image))


@pytest.mark.parametrize("arch", ["efficientdet", "cornernet"])
def test_mm_to_d2(arch, tmp_path):
    build_d2, build_mm = BUILDERS[arch]
    torch.manual_seed(2)
    mm_model = build_mm()
    perturb_(mm_model, seed=3)
    src, dst = tmp_path / "mm.pth", tmp_path / "d2.pth"
    torch.save({"state_dict": mm_model.state_dict(), "meta": {"epoch": 1}}, src)
    assert convert.main([str(src), str(dst)]) == 0
    checkpoint = load_checkpoint_file(dst)
    assert set(checkpoint) == {"model"}

    torch.manual_seed(3)
    d2_model = build_d2()
    d2_model.load_state_dict(checkpoint["model"], strict=True)
    image = make_image()
    assert_same_detections(run_mm(mm_model, image), run_d2(d2_model, image))


@pytest.mark.parametrize("arch", ["efficientdet", "cornernet"])
def test_round_trip_and_ema_layout(arch):
    """d2 -> mm -> d2 is the identity, EMA included (mmengine's swapped EMAHook layout)."""
    build_d2, _ = BUILDERS[arch]
    torch.manual_seed(4)
    model = build_d2().state_dict()
    average = {k: v + 1 if v.is_floating_point() else v.clone() for k, v in model.items()}
    d2_ckpt = {"model": model, "ema": {"decay": 0.9998, "num_updates": 5, "state": average}}

    mm_ckpt = convert.d2_to_mm_checkpoint(d2_ckpt, use_ema=True)
    assert set(mm_ckpt) == {"state_dict", "ema_state_dict", "meta"}
    assert int(mm_ckpt["ema_state_dict"]["steps"]) == 5
    mm_keys = set(mm_ckpt["state_dict"])
    assert {k[len("module.") :] for k in mm_ckpt["ema_state_dict"] if k != "steps"} == mm_keys
    for key, value in convert.d2_to_mm_state_dict(average).items():
        assert mm_ckpt["state_dict"][key] is value  # mmengine evaluates state_dict: the average

    back = convert.mm_to_d2_checkpoint(mm_ckpt, use_ema=True)
    assert back["ema"]["num_updates"] == 5
    assert back["model"].keys() == model.keys()
    assert all(back["model"][k] is model[k] for k in model)
    assert all(back["ema"]["state"][k] is average[k] for k in average)
    assert convert.mm_to_d2_checkpoint(mm_ckpt)["model"].keys() == model.keys()


def test_rejects_foreign_keys():
    state = {"backbone.body.w": torch.zeros(1), "head.net.w": torch.zeros(1), "extra": 1}
    with pytest.raises(ValueError, match="extra"):
        convert.d2_to_mm_state_dict(state)
    with pytest.raises(ValueError, match="no EfficientDet or CornerNet head"):
        convert.d2_to_mm_state_dict({"backbone.bottom_up.w": torch.zeros(1)})
