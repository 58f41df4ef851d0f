"""The installed stack really works: each framework piece the plugin relies on runs here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch


def test_torchvision_nms_runs():
    from torchvision.ops import nms

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]


def test_mmcv_soft_nms_and_corner_pool():
    from mmcv.ops import CornerPool, soft_nms

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    scores = torch.tensor([0.9, 0.8])
    dets, inds = soft_nms(
        boxes, scores, iou_threshold=0.3, sigma=0.5, min_score=0.0, method="linear"
    )
    # identical boxes: linear decay multiplies the second score by (1 - IoU) = 0
    assert inds.tolist()[0] == 0
    assert dets[0, 4].item() == pytest.approx(0.9)
    assert dets.shape[1] == 5 and dets[1:, 4].abs().max().item() == pytest.approx(0.0)

    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    top = CornerPool("top")(x)
    # 'top' pooling takes the max over each position and everything below it
    assert torch.equal(top, torch.tensor([[[[3.0, 4.0, 5.0], [3.0, 4.0, 5.0]]]]))


def test_mmdet_models_registered():
    import mmdet.models  # noqa: F401
    from mmdet.registry import MODELS

    for name in (
        "RetinaNet",
        "CornerNet",
        "HourglassNet",
        "CornerHead",
        "FocalLoss",
        "GaussianFocalLoss",
    ):
        assert MODELS.get(name) is not None, name


def test_detectron2_retinanet_forward_on_cpu():
    import plugins.d2  # noqa: F401  (provides detectron2._C when the extension is missing)

    # isort: split
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 160, 224), dtype=torch.uint8).float()
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 160, "width": 224}])
    inst = out["instances"]
    assert inst.image_size == (160, 224)
    boxes = inst.pred_boxes.tensor
    assert boxes.shape[1] == 4 and len(inst) > 0
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 224).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 160).all()
    assert ((inst.scores >= 0) & (inst.scores <= 1)).all()


def test_detectron2_missing_extension_is_named():
    import plugins.d2
    from plugins.d2._compat import D2ExtensionMissingError

    if plugins.d2.HAS_D2_C:
        pytest.skip("detectron2 was built with its C++ extension: nothing is missing")
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    with pytest.raises(D2ExtensionMissingError, match="rotated boxes"):
        pairwise_iou_rotated(torch.zeros(1, 5), torch.zeros(1, 5))


def test_effdet_builds_d0_without_weights():
    from effdet import create_model

    model = create_model("tf_efficientdet_d0", pretrained=False, pretrained_backbone=False)
    n = sum(p.numel() for p in model.parameters())
    assert 3_800_000 < n < 3_950_000


def test_plugins_core_imports_no_framework():
    code = (
        "import sys, json, pkgutil, importlib\n"
        "for pkg in ('plugins.core', 'plugins.data', 'plugins.convert'):\n"
        "    mod = importlib.import_module(pkg)\n"
        "    for m in pkgutil.walk_packages(mod.__path__, pkg + '.'):\n"
        "        if not m.name.endswith('__main__'):\n"
        "            importlib.import_module(m.name)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in "
        "('detectron2', 'mmdet', 'mmcv', 'mmengine', 'effdet', 'timm'))\n"
        "print(json.dumps(bad))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []
