"""Detectron2 CornerNet adapter: configs, training step, inference, checkpoint layout.

References: mmdet's ``CornerHead`` (losses and test-time decoding + soft-NMS, when mmdet and
mmcv are installed), closed forms (planted corners, empty images), and the core network.
"""

from __future__ import annotations

import math
from pathlib import Path

import plugins.d2  # noqa: F401  (first: stands in for a missing detectron2._C)

# isort: split
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.structures import Boxes, Instances

from plugins.core.cornernet import CornerNet as CoreCornerNet
from plugins.core.cornernet import CornerNetHead
from plugins.core.hourglass import HourglassNet
from plugins.d2.config import add_plugins_config
from plugins.d2.cornernet import CornerNet, HourglassBackbone

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
HG104_YAML = CONFIGS / "cornernet_hourglass104.yaml"
DEMO_YAML = CONFIGS / "demo" / "cornernet_shapes.yaml"
NUM_CLASSES = 3
LOSS_KEYS = {"loss_heatmap", "loss_offset", "loss_pull", "loss_push"}


pytestmark = pytest.mark.usefixtures("single_thread")


def _cfg(path: Path = DEMO_YAML, *opts):
    cfg = get_cfg()
    add_plugins_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(list(opts))
    return cfg


def _tiny_cfg(*opts):
    """Demo config shrunk further: 2 stacks, 2 downsamplings (inputs padded to 16 px)."""
    return _cfg(
        DEMO_YAML,
        "MODEL.HOURGLASS.DOWNSAMPLE_TIMES", 2,
        "MODEL.HOURGLASS.NUM_STACKS", 2,
        "MODEL.HOURGLASS.STAGE_CHANNELS", [8, 8, 16],
        "MODEL.HOURGLASS.STAGE_BLOCKS", [1, 1, 1],
        "MODEL.HOURGLASS.FEAT_CHANNELS", 8,
        "MODEL.CORNERNET.NUM_CLASSES", NUM_CLASSES,
        "MODEL.CORNERNET.POOL_CHANNELS", 8,
        "MODEL.CORNERNET.HIDDEN_CHANNELS", 8,
        *opts,
    )  # fmt: skip


def _tiny_model(*opts, seed: int = 0) -> CornerNet:
    torch.manual_seed(seed)
    return build_model(_tiny_cfg(*opts))


def _instances(hw: tuple[int, int], boxes: list[list[float]], classes: list[int]) -> Instances:
    inst = Instances(hw)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def _batch(seed: int = 1) -> list[dict]:
    """Two random images: one with two boxes (one reaching the border), one without boxes."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.rand(3, 60, 70, generator=g) * 255,
            "instances": _instances((60, 70), [[5, 6, 40, 50], [20, 10, 70, 60]], [0, 2]),
        },
        {
            "image": torch.rand(3, 64, 50, generator=g) * 255,
            "instances": _instances((64, 50), [], []),
        },
    ]


class _HeadCapture:
    """Forward hook keeping the head's output (``outputs``) and the padded batch shape."""

    def __init__(self, model: CornerNet) -> None:
        self.outputs: dict | None = None
        self.input_hw: tuple[int, int] | None = None
        model.head.register_forward_hook(self._head)
        model.backbone.register_forward_pre_hook(self._backbone)

    def _head(self, module, args, output) -> None:
        self.outputs = output

    def _backbone(self, module, args) -> None:
        self.input_hw = tuple(args[0].shape[-2:])


# ---------------------------------------------------------------------------------------------
# Configs and construction
# ---------------------------------------------------------------------------------------------
def test_registered_without_collision():
    assert META_ARCH_REGISTRY.get("CornerNet") is CornerNet
    cfg = get_cfg()
    add_plugins_config(cfg)
    add_plugins_config(cfg)  # idempotent
    assert cfg.MODEL.CORNERNET.PULL_WEIGHT == pytest.approx(0.1)
    assert cfg.MODEL.CORNERNET.PUSH_WEIGHT == pytest.approx(0.1)
    assert cfg.MODEL.CORNERNET.SOFT_NMS.METHOD == "gaussian"
    with pytest.raises((KeyError, AssertionError), match="NO_SUCH_KEY"):
        cfg.merge_from_list(["MODEL.CORNERNET.NO_SUCH_KEY", 1])


def test_demo_config_builds():
    cfg = _cfg(DEMO_YAML)
    assert cfg.DATASETS.TRAIN == ("shapes_train",) and cfg.DATASETS.TEST == ("shapes_val",)
    model = build_model(cfg)
    assert isinstance(model, CornerNet) and isinstance(model.backbone, HourglassBackbone)
    hg = cfg.MODEL.HOURGLASS
    assert model.backbone.size_divisibility == 4 * 2**hg.DOWNSAMPLE_TIMES
    shapes = model.backbone.output_shape()
    assert list(shapes) == [f"hg{i}" for i in range(hg.NUM_STACKS)]
    assert all(s.stride == 4 and s.channels == hg.FEAT_CHANNELS for s in shapes.values())
    assert model.head.net.num_classes == cfg.MODEL.CORNERNET.NUM_CLASSES == 6
    assert model.head.net.num_feat_levels == hg.NUM_STACKS


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_hourglass104_config_parameter_count():
    cfg = _cfg(HG104_YAML)
    assert cfg.INPUT.SCALE_JITTER.SIZE == 511
    assert cfg.SOLVER.OPTIMIZER == "AdamW" and cfg.SOLVER.WEIGHT_DECAY == 0.0  # = Adam
    assert cfg.MODEL.CORNERNET.SOFT_NMS.ENABLED
    with torch.device("meta"):  # ~200M parameters: count without allocating them
        model = CornerNet(cfg)
        reference = _count(HourglassNet()) + _count(CornerNetHead(80, 256))
    assert model.backbone.size_divisibility == 128
    count = _count(model)
    assert count == reference
    assert count == _count(model.backbone.body) + _count(model.head.net)
    print(f"CornerNet Hourglass-104 (80 classes): {count} parameters")


def test_hourglass104_parameter_count_matches_mmdet():
    import mmcv.ops  # noqa: F401  (installed by tools/setup_env.sh; fail loudly if broken)
    import mmdet
    import mmdet.models  # noqa: F401  (installed by tools/setup_env.sh; fail loudly if broken)
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    path = (
        Path(mmdet.__file__).parent
        / ".mim/configs/cornernet/cornernet_hourglass104_8xb6-210e-mstest_coco.py"
    )
    with torch.device("meta"):
        reference = MODELS.build(Config.fromfile(str(path)).model)
        model = CornerNet(_cfg(HG104_YAML))
    assert _count(model) == _count(reference)
    print(f"mmdet CornerNet Hourglass-104: {_count(reference)} parameters")


def test_state_dict_layout_matches_contract_and_core_network():
    model = _tiny_model().eval()
    state = model.state_dict()
    assert state and all(k.startswith(("backbone.body.", "head.net.")) for k in state)
    # A pure prefix swap loads the weights into the core network, which then computes the same maps.
    core = CoreCornerNet(
        NUM_CLASSES,
        HourglassNet(
            downsample_times=2,
            num_stacks=2,
            stage_channels=(8, 8, 16),
            stage_blocks=(1, 1, 1),
            feat_channel=8,
        ),
    )
    core.head = CornerNetHead(NUM_CLASSES, 8, 2, pool_channels=8, hidden_channels=8)
    swapped = {
        k.replace("backbone.body.", "backbone.", 1).replace("head.net.", "head.", 1): v
        for k, v in state.items()
    }
    core.load_state_dict(swapped, strict=True)
    core.eval()
    capture = _HeadCapture(model)
    batch = [{"image": torch.rand(3, 48, 64) * 255}]
    with torch.no_grad():
        model(batch)
        normalized = (batch[0]["image"] - model.pixel_mean) / model.pixel_std
        expected = core(normalized[None])
    assert capture.outputs is not None
    for key, maps in expected.items():
        for got, want in zip(capture.outputs[key], maps):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def test_training_step_with_an_empty_image_is_finite():
    model = _tiny_model().train()
    losses = model(_batch())
    assert set(losses) == LOSS_KEYS
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
        assert value.item() >= 0, name
    assert losses["loss_heatmap"].item() > 0 and losses["loss_offset"].item() > 0
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("backbone.body."))
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("head.net."))


def test_training_without_any_box_has_zero_embedding_and_offset_losses():
    model = _tiny_model().train()
    batch = [dict(b, instances=_instances(b["image"].shape[-2:], [], [])) for b in _batch()]
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_heatmap"].item() > 0  # every cell is a negative
    for name in ("loss_offset", "loss_pull", "loss_push"):  # nothing to pull, push or offset
        assert losses[name].item() == 0.0, name
    sum(losses.values()).backward()


def test_training_losses_match_mmdet_corner_head():
    import mmcv.ops  # noqa: F401  (installed by tools/setup_env.sh; fail loudly if broken)
    import mmdet.models  # noqa: F401  (installed by tools/setup_env.sh; fail loudly if broken)
    from mmdet.models.dense_heads import CornerHead
    from mmdet.utils import register_all_modules
    from mmengine.structures import InstanceData

    register_all_modules()
    model = _tiny_model().train()
    capture = _HeadCapture(model)
    batch = _batch()
    losses = model(batch)
    reference = CornerHead(
        num_classes=NUM_CLASSES,
        in_channels=8,
        num_feat_levels=2,
        loss_embedding=dict(type="AssociativeEmbeddingLoss", pull_weight=0.1, push_weight=0.1),
    )
    out = capture.outputs
    gts = [
        InstanceData(bboxes=b["instances"].gt_boxes.tensor, labels=b["instances"].gt_classes)
        for b in batch
    ]
    metas = [{"batch_input_shape": capture.input_hw} for _ in batch]
    ref = reference.loss_by_feat(
        out["tl_heat"], out["br_heat"], out["tl_emb"], out["br_emb"], out["tl_off"],
        out["br_off"], gts, metas,
    )  # fmt: skip
    names = {"det_loss": "loss_heatmap", "off_loss": "loss_offset", "pull_loss": "loss_pull"}
    names["push_loss"] = "loss_push"
    for ref_name, ours in names.items():
        want = sum(ref[ref_name])
        torch.testing.assert_close(losses[ours], want, rtol=1e-5, atol=1e-7, msg=ours)


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------
def test_inference_returns_valid_instances():
    model = _tiny_model(seed=3).eval()
    g = torch.Generator().manual_seed(4)
    batch = [
        {"image": torch.rand(3, 60, 70, generator=g) * 255, "height": 120, "width": 140},
        {"image": torch.rand(3, 64, 48, generator=g) * 255},
    ]
    with torch.no_grad():
        results = model(batch)
    assert len(results) == 2
    for res, (h, w) in zip(results, [(120, 140), (64, 48)]):
        inst = res["instances"]
        assert isinstance(inst, Instances) and inst.image_size == (h, w)
        assert 0 < len(inst) <= 100
        boxes = inst.pred_boxes.tensor
        assert boxes.shape == (len(inst), 4) and torch.isfinite(boxes).all()
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
        assert (inst.scores[:-1] >= inst.scores[1:]).all()  # best first
        assert inst.pred_classes.dtype == torch.int64
        assert ((inst.pred_classes >= 0) & (inst.pred_classes < NUM_CLASSES)).all()


def test_inference_decodes_planted_corners():
    """One planted corner pair must come back as one box, scaled to the output size."""
    model = _tiny_model().eval()
    image_hw, out_hw = (64, 80), (128, 160)  # no padding (multiples of 16); output 2x larger
    fh, fw = image_hw[0] // 4, image_hw[1] // 4
    cls, (ty, tx), (by, bx) = 1, (2, 3), (12, 17)
    p_tl, p_br = 0.9, 0.7
    tl_heat = torch.full((1, NUM_CLASSES, fh, fw), -30.0)
    br_heat = tl_heat.clone()
    tl_heat[0, cls, ty, tx] = math.log(p_tl / (1 - p_tl))
    br_heat[0, cls, by, bx] = math.log(p_br / (1 - p_br))
    tl_off = torch.zeros(1, 2, fh, fw)
    br_off = torch.zeros(1, 2, fh, fw)
    tl_off[0, :, ty, tx] = torch.tensor([0.25, 0.5])  # (x, y)
    br_off[0, :, by, bx] = torch.tensor([0.75, 0.0])
    # other cells embed far away: pairing them with a planted corner is rejected
    tl_emb = torch.full((1, 1, fh, fw), 10.0)
    br_emb = tl_emb.clone()
    tl_emb[0, 0, ty, tx] = br_emb[0, 0, by, bx] = 0.0
    planted = {
        "tl_heat": [tl_heat] * 2,
        "br_heat": [br_heat] * 2,
        "tl_emb": [tl_emb] * 2,
        "br_emb": [br_emb] * 2,
        "tl_off": [tl_off] * 2,
        "br_off": [br_off] * 2,
    }
    model.head.forward = lambda feats: planted
    image = torch.zeros(3, *image_hw)
    with torch.no_grad():
        (res,) = model([{"image": image, "height": out_hw[0], "width": out_hw[1]}])
    inst = res["instances"]
    assert len(inst) == 1  # every other pair scores ~1e-13, below the soft-NMS threshold
    scale = 4 * out_hw[0] / image_hw[0]
    expected = torch.tensor([[tx + 0.25, ty + 0.5, bx + 0.75, by + 0.0]]) * scale
    torch.testing.assert_close(inst.pred_boxes.tensor, expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(inst.scores, torch.tensor([(p_tl + p_br) / 2]), rtol=1e-6, atol=0)
    assert inst.pred_classes.tolist() == [cls]


def test_inference_matches_mmdet_corner_head():
    import mmcv.ops  # noqa: F401  (installed by tools/setup_env.sh; fail loudly if broken)
    import mmdet.models  # noqa: F401  (installed by tools/setup_env.sh; fail loudly if broken)
    from mmdet.models.dense_heads import CornerHead
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict

    register_all_modules()
    model = _tiny_model(seed=5).eval()
    capture = _HeadCapture(model)
    g = torch.Generator().manual_seed(6)
    hw = (64, 80)  # a multiple of 16: no padding, so both sides decode the same grid
    batch = [{"image": torch.rand(3, *hw, generator=g) * 255} for _ in range(2)]
    with torch.no_grad():
        results = model(batch)
    test_cfg = ConfigDict(
        corner_topk=100,
        local_maximum_kernel=3,
        distance_threshold=0.5,
        score_thr=0.05,
        max_per_img=100,
        nms=dict(type="soft_nms", iou_threshold=0.5, method="gaussian"),
    )
    reference = CornerHead(num_classes=NUM_CLASSES, in_channels=8, test_cfg=test_cfg)
    out = capture.outputs
    metas = [{"batch_input_shape": hw, "img_shape": hw} for _ in batch]
    ref = reference.predict_by_feat(
        out["tl_heat"], out["br_heat"], out["tl_emb"], out["br_emb"], out["tl_off"],
        out["br_off"], batch_img_metas=metas, rescale=False,
    )  # fmt: skip
    for ours, theirs in zip(results, ref):
        inst = ours["instances"]
        want_boxes = Boxes(theirs.bboxes.clone())
        want_boxes.clip(hw)  # Detectron2 clips after NMS and drops empty boxes
        keep = want_boxes.nonempty()
        assert len(inst) == int(keep.sum()) > 0
        torch.testing.assert_close(inst.scores, theirs.scores[keep], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            inst.pred_boxes.tensor, want_boxes.tensor[keep], atol=1e-4, rtol=0
        )
        assert inst.pred_classes.tolist() == theirs.labels[keep].tolist()


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_raise_value_error():
    model = _tiny_model().eval()
    with pytest.raises(ValueError, match=r"image.*\(3, H, W\)"):
        model([{"image": torch.zeros(1, 64, 64)}])
    with pytest.raises(ValueError, match="multiples of 16"):
        model.backbone(torch.zeros(1, 3, 24, 32))
    with pytest.raises(ValueError, match="instances"):
        model.train()([{"image": torch.zeros(3, 64, 64)}])
    with pytest.raises(ValueError, match="FOCAL_ALPHA"):
        build_model(_tiny_cfg("MODEL.CORNERNET.FOCAL_ALPHA", 3.0))
    with pytest.raises(ValueError, match="soft_nms_method"):
        build_model(_tiny_cfg("MODEL.CORNERNET.SOFT_NMS.METHOD", "box_voting"))
