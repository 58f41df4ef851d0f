"""MMDetection CornerNet adapter (plugins.mm.cornernet) against mmdet 3.3's own CornerNet.

Small, seeded, CPU: tiny hourglasses on 64 px images; the Hourglass-104 configs are only
built on the ``meta`` device (shapes, no memory, no compute).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import mmdet
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmengine.config import Config, ConfigDict
from mmengine.registry import init_default_scope

import plugins.mm.cornernet  # noqa: F401  (registration, also done by plugins.mm)
from plugins.convert.mmdet_cornernet import convert_mmdet_cornernet_state_dict
from plugins.core.cornernet import CornerNetHead
from plugins.core.hourglass import HOURGLASS_TINY, HourglassNet
from plugins.data.shapes import SHAPES_CLASSES
from plugins.mm.cornernet import PluginsCornerHead, PluginsHourglassNet

REPO = Path(__file__).resolve().parents[2]
PAPER_CFG = REPO / "configs" / "mmdet" / "cornernet_hourglass104.py"
DEMO_CFG = REPO / "configs" / "mmdet" / "demo" / "cornernet_shapes.py"
MMDET_CFG = (
    Path(mmdet.__file__).parent
    / ".mim/configs/cornernet/cornernet_hourglass104_8xb6-210e-mstest_coco.py"
)
NUM_CLASSES = 6
TEST_CFG = ConfigDict(  # mmdet's CornerHead reads it by attribute
    # with untrained heads the top corners of the two heatmaps rarely share a class: take many
    # (mmdet also needs corner_topk ** 2 >= its 1000 candidates); kernel 1 zeroes no corner,
    # so no two candidate pairs tie in score and both sides' orders are unambiguous
    corner_topk=200,
    local_maximum_kernel=1,
    distance_threshold=0.5,
    score_thr=0.0,
    max_per_img=50,
    nms=dict(type="soft_nms", iou_threshold=0.5, method="gaussian"),
)


def ours_from_mmdet_keys(mmdet_sd: dict) -> dict:
    """mmdet CornerNet state dict -> our mm detector's (core converter + contract prefixes)."""
    core = convert_mmdet_cornernet_state_dict(mmdet_sd)
    out = {}
    for key, value in core.items():
        if key.startswith("backbone."):
            out["backbone.body." + key[len("backbone.") :]] = value
        else:
            assert key.startswith("head.")
            out["bbox_head.net." + key[len("head.") :]] = value
    return out


def _unscoped(value):
    """Config value without the ``_scope_`` keys mmengine adds to ``mmdet::`` bases."""
    if isinstance(value, dict):
        return {k: _unscoped(v) for k, v in value.items() if k != "_scope_"}
    if isinstance(value, (list, tuple)):
        return [_unscoped(v) for v in value]
    return value


def tiny_model_cfg(ours: bool, test_cfg: dict | None = None) -> dict:
    """A two-stack tiny CornerNet, ours or mmdet's, with identical hyper-parameters."""
    head = dict(
        num_classes=NUM_CLASSES,
        in_channels=HOURGLASS_TINY["feat_channel"],
        num_feat_levels=2,
        corner_emb_channels=1,
        loss_heatmap=dict(type="GaussianFocalLoss", alpha=2.0, gamma=4.0, loss_weight=1.0),
        loss_embedding=dict(type="AssociativeEmbeddingLoss", pull_weight=0.1, push_weight=0.1),
        loss_offset=dict(type="SmoothL1Loss", beta=1.0, loss_weight=1.0),
    )
    return dict(
        type="CornerNet",
        data_preprocessor=dict(
            type="DetDataPreprocessor",
            mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375],
            bgr_to_rgb=True,
            pad_size_divisor=16,
        ),
        backbone=dict(type="PluginsHourglassNet" if ours else "HourglassNet", **HOURGLASS_TINY),
        neck=None,
        bbox_head=dict(type="PluginsCornerHead" if ours else "CornerHead", **head),
        train_cfg=None,
        test_cfg=ConfigDict(copy.deepcopy(test_cfg if test_cfg is not None else TEST_CFG)),
    )


def demo_batch(model, training: bool, seed: int = 0) -> dict:
    """Two 64 px images from mmdet's test helper: 4 boxes, then none."""
    torch.manual_seed(seed)
    packed = demo_mm_inputs(
        batch_size=2, image_shapes=(3, 64, 64), num_items=[4, 0], num_classes=NUM_CLASSES
    )
    return model.data_preprocessor(packed, training)


def perturb_(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial weights and BatchNorm statistics (seeded) so outputs differ per location."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen) * 0.02
            if name.endswith("running_var"):
                tensor.copy_(1.0 + noise.abs())
            else:
                tensor.add_(noise)


def calm_embeddings_(branches) -> None:
    """Shrink the last level's embedding outputs so random corners pair up (|e| << 0.5)."""
    with torch.no_grad():
        for conv in branches:
            conv.weight.mul_(0.1)
            conv.bias.zero_()


@pytest.fixture(scope="module", autouse=True)
def _mmdet_scope():
    init_default_scope("mmdet")


# ------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------
def test_paper_config_matches_mmdet_architecture():
    """The paper config builds our modules with exactly mmdet's Hourglass-104 CornerNet tensors."""
    cfg = Config.fromfile(str(PAPER_CFG))
    base = Config.fromfile(str(MMDET_CFG))
    assert cfg.custom_imports == dict(imports=["plugins.mm"], allow_failed_imports=False)
    assert cfg.model.type == "CornerNet"
    assert cfg.model.backbone.type == "PluginsHourglassNet"
    assert cfg.model.bbox_head.type == "PluginsCornerHead"
    assert cfg.model.test_cfg.nms.type == "plugins_soft_nms"
    assert cfg.model.test_cfg.nms.method == "gaussian" and cfg.model.test_cfg.nms.sigma == 0.5
    # the recipe (data, schedule, optimizer) is mmdet's, untouched
    for key in ("train_dataloader", "optim_wrapper", "param_scheduler", "train_cfg"):
        assert _unscoped(cfg[key]) == _unscoped(base[key]), key
    with torch.device("meta"):
        ours = MODELS.build(cfg.model)
        ref = MODELS.build(base.model)
    assert isinstance(ours.backbone, PluginsHourglassNet)
    assert isinstance(ours.backbone.body, HourglassNet)
    assert isinstance(ours.bbox_head, PluginsCornerHead)
    assert isinstance(ours.bbox_head.net, CornerNetHead)
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    mapped = {k: tuple(v.shape) for k, v in ours_from_mmdet_keys(ref.state_dict()).items()}
    assert ours_shapes == mapped
    n_params = sum(p.numel() for p in ours.parameters())
    assert n_params == sum(p.numel() for p in ref.parameters())
    assert all(k.startswith(("backbone.body.", "bbox_head.net.")) for k in ours_shapes)


def test_demo_config_builds():
    cfg = Config.fromfile(str(DEMO_CFG))
    assert cfg.custom_imports == dict(imports=["plugins.mm"], allow_failed_imports=False)
    assert cfg.train_dataloader.dataset.type == "PluginsShapesDataset"
    assert cfg.val_evaluator.type == "PluginsShapesMetric"
    model = MODELS.build(cfg.model)
    assert isinstance(model.backbone.body, HourglassNet)
    assert model.bbox_head.net.num_classes == len(SHAPES_CLASSES) == cfg.num_classes
    keys = list(model.state_dict())
    assert keys and all(k.startswith(("backbone.body.", "bbox_head.net.")) for k in keys)
    with torch.no_grad():
        feats = model.extract_feat(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, cfg.feat_channel, 16, 16)] * 2


# ------------------------------------------------------------------------------------------
# Training and inference
# ------------------------------------------------------------------------------------------
def test_loss_finite_with_empty_image():
    torch.manual_seed(0)
    model = MODELS.build(tiny_model_cfg(ours=True))
    model.train()
    data = demo_batch(model, training=True)
    assert len(data["data_samples"][1].gt_instances) == 0
    losses = model(**data, mode="loss")
    assert set(losses) == {"det_loss", "off_loss", "pull_loss", "push_loss"}
    for name, per_level in losses.items():
        assert len(per_level) == 2, name
        assert all(v.dim() == 0 and torch.isfinite(v) for v in per_level), name
    assert all(v > 0 for v in losses["det_loss"])
    total, _ = model.parse_losses(losses)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_loss_without_objects_is_heatmap_only():
    """No ground truth at all: only the negatives' focal term remains (closed form)."""
    torch.manual_seed(0)
    model = MODELS.build(tiny_model_cfg(ours=True))
    data = demo_batch(model, training=True)
    for sample in data["data_samples"]:
        sample.gt_instances = sample.gt_instances[:0]
    with torch.no_grad():
        feats = model.extract_feat(data["inputs"])
        outs = model.bbox_head(feats)
        losses = model.bbox_head.loss(feats, data["data_samples"])
    for lvl in range(2):
        assert float(losses["off_loss"][lvl]) == 0.0
        assert float(losses["pull_loss"][lvl]) == 0.0
        assert float(losses["push_loss"][lvl]) == 0.0
        expected = 0.0
        for heat in (outs[0][lvl], outs[1][lvl]):  # -(log(1 - p) p^2) summed, / (1 + eps)
            p = heat.sigmoid()
            expected += float(-(torch.log(1 - p) * p.pow(2)).sum()) / 2.0
        eps = torch.finfo(torch.float32).eps
        assert math.isclose(float(losses["det_loss"][lvl]), expected / (1 + eps), rel_tol=1e-4)


def test_predict_boxes_inside_image_and_scores_in_unit_interval():
    torch.manual_seed(0)
    model = MODELS.build(tiny_model_cfg(ours=True, test_cfg=dict(TEST_CFG, local_maximum_kernel=3)))
    perturb_(model)
    last = model.bbox_head.net.levels[-1]
    calm_embeddings_([last.tl_emb.out, last.br_emb.out])
    model.eval()
    data = demo_batch(model, training=False)
    with torch.no_grad():
        results = model(**data, mode="predict")
    total = 0
    for sample in results:
        pred = sample.pred_instances
        h, w = sample.ori_shape
        n = len(pred)
        total += n
        assert pred.bboxes.shape == (n, 4) and pred.scores.shape == (n,)
        assert pred.labels.dtype == torch.long and n <= TEST_CFG["max_per_img"]
        assert (pred.bboxes[:, 0::2] >= 0).all() and (pred.bboxes[:, 0::2] <= w).all()
        assert (pred.bboxes[:, 1::2] >= 0).all() and (pred.bboxes[:, 1::2] <= h).all()
        assert ((pred.scores >= 0) & (pred.scores <= 1)).all()
        assert ((pred.labels >= 0) & (pred.labels < NUM_CLASSES)).all()
        assert (pred.scores[:-1] >= pred.scores[1:]).all()
    assert total > 0


def test_predict_empty_when_nothing_passes_threshold():
    model = MODELS.build(tiny_model_cfg(ours=True, test_cfg=dict(TEST_CFG, score_thr=1.0)))
    model.eval()
    data = demo_batch(model, training=False)
    with torch.no_grad():
        results = model(**data, mode="predict")
    for sample in results:
        assert sample.pred_instances.bboxes.shape == (0, 4)
        assert sample.pred_instances.scores.shape == (0,)
        assert sample.pred_instances.labels.shape == (0,)


def test_unsupported_configs_raise():
    with pytest.raises(ValueError, match="loss_heatmap"):
        PluginsCornerHead(
            NUM_CLASSES,
            8,
            loss_heatmap=dict(type="GaussianFocalLoss", alpha=2.0, gamma=3.0),
        )
    with pytest.raises(ValueError, match="loss_offset"):
        PluginsCornerHead(NUM_CLASSES, 8, loss_offset=dict(type="L1Loss"))
    with pytest.raises(ValueError, match="norm_cfg"):
        PluginsHourglassNet(**HOURGLASS_TINY, norm_cfg=dict(type="GN", num_groups=4))


# ------------------------------------------------------------------------------------------
# Against mmdet's CornerNet (HourglassNet + CornerHead) with mapped weights
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def twin_models():
    """mmdet's tiny CornerNet with perturbed weights, and ours loaded from it (strict)."""
    init_default_scope("mmdet")
    torch.manual_seed(0)
    ref = MODELS.build(tiny_model_cfg(ours=False))
    perturb_(ref, seed=1)
    calm_embeddings_([ref.bbox_head.tl_emb[-1][-1].conv, ref.bbox_head.br_emb[-1][-1].conv])
    ours = MODELS.build(tiny_model_cfg(ours=True))
    ours.load_state_dict(ours_from_mmdet_keys(ref.state_dict()), strict=True)
    return ref, ours


@pytest.mark.parametrize("training", [True, False])
def test_losses_equal_mmdet(twin_models, training):
    ref, ours = twin_models
    ref.train(training)
    ours.train(training)
    data = demo_batch(ref, training=True)
    ref_losses = ref(**copy.deepcopy(data), mode="loss")
    our_losses = ours(**copy.deepcopy(data), mode="loss")
    assert set(our_losses) == set(ref_losses)
    for name in ref_losses:
        for lvl, (a, b) in enumerate(zip(our_losses[name], ref_losses[name])):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=f"{name}[{lvl}]")
    # gradients agree too (through our corner pooling vs mmcv's CornerPool)
    ref.zero_grad()
    ours.zero_grad()
    ref.parse_losses(ref_losses)[0].backward()
    ours.parse_losses(our_losses)[0].backward()
    ref_grads = ours_from_mmdet_keys({k: p.grad for k, p in ref.named_parameters()})
    for name, p in ours.named_parameters():
        # relative to the tensor's largest gradient: summation order differs between the sides
        scale = float(ref_grads[name].abs().max()) + 1e-12
        assert float((p.grad - ref_grads[name]).abs().max()) <= 1e-4 * scale, name


def _sorted_dets(pred) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    order = torch.argsort(pred.scores, descending=True, stable=True)
    return pred.bboxes[order], pred.scores[order], pred.labels[order]


def test_predictions_equal_mmdet(twin_models):
    """Same decoding, mmcv soft-NMS on both sides; mmdet does not clip, so we clip its boxes."""
    ref, ours = twin_models
    ref.eval()
    ours.eval()
    data = demo_batch(ref, training=False)
    with torch.no_grad():
        ref_res = ref(**copy.deepcopy(data), mode="predict")
        our_res = ours(**copy.deepcopy(data), mode="predict")
    for r, o in zip(ref_res, our_res):
        h, w = r.ori_shape
        rb, rs, rl = _sorted_dets(r.pred_instances)
        ob, os_, ol = _sorted_dets(o.pred_instances)
        assert len(rb) > 0
        rb = torch.stack(
            (
                rb[:, 0].clamp(0, w),
                rb[:, 1].clamp(0, h),
                rb[:, 2].clamp(0, w),
                rb[:, 3].clamp(0, h),
            ),
            dim=1,
        )
        torch.testing.assert_close(os_, rs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ob, rb, rtol=1e-5, atol=1e-4)
        assert torch.equal(ol, rl.long())


def test_core_soft_nms_matches_mmcv_soft_nms(twin_models):
    """test_cfg.nms plugins_soft_nms (core) vs soft_nms (mmcv) on the same decoded pairs."""
    _, ours = twin_models
    ours.eval()
    data = demo_batch(ours, training=False)
    head = ours.bbox_head
    results = {}
    for kind in ("soft_nms", "plugins_soft_nms"):
        nms = dict(type=kind, iou_threshold=0.5, method="gaussian", sigma=0.5, min_score=1e-3)
        head.test_cfg = ConfigDict(TEST_CFG, nms=nms)
        with torch.no_grad():
            results[kind] = ours(**copy.deepcopy(data), mode="predict")
    head.test_cfg = TEST_CFG
    for a, b in zip(results["soft_nms"], results["plugins_soft_nms"]):
        ab, as_, al = _sorted_dets(a.pred_instances)
        bb, bs, bl = _sorted_dets(b.pred_instances)
        assert len(ab) == len(bb) > 0
        torch.testing.assert_close(bs, as_, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bb, ab, rtol=1e-5, atol=1e-4)
        assert torch.equal(al, bl)
