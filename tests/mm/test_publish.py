"""Published (model-zoo style) MMDetection checkpoints: written at the end of training by
``PluginsPublishHook`` and by ``tools/publish_model.py``, loaded as is by ``tools/mm_test.py``,
``init_detector`` and ``DetInferencer``, reproducing the metrics training reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from mmdet.apis import DetInferencer, inference_detector, init_detector
from mmengine.runner import Runner

import plugins.mm  # noqa: F401  (registrations, safe checkpoint loading)
from plugins.data.shapes import SHAPES_CLASSES, ensure_shapes_dataset
from plugins.publish import check_published_name
from plugins.safe_load import load_checkpoint_file
from tests.forked import exit_code, run_forked
from tests.zoo_checks import assert_plain, import_tool

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "mmdet" / "demo" / "efficientdet_shapes.py"

# The demo recipe with the tiny variant at 128 px: 2 iterations on 4 images, then validation on
# all 64 val images with 1000 candidates per level (mAP_50 0.004 here: something to reproduce).
TINY_CONFIG = f"""
_base_ = {str(DEMO)!r}
variant = dict(base="efficientdet_test", anchor_scale=3.0)
size = 128
model = dict(
    data_preprocessor=dict(batch_augments=[dict(type="BatchFixedSizePad", size=(size, size))]),
    backbone=dict(variant=variant),
    neck=dict(variant=variant),
    bbox_head=dict(variant=variant, anchor_generator=dict(variant=variant)),
    test_cfg=dict(nms_pre=1000),
)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="Resize", scale=(size, size), keep_ratio=True),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(size, size), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs",
         meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(indices=4, pipeline=train_pipeline))
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                      dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1, val_interval=1)
default_hooks = dict(checkpoint=dict(interval=1), logger=dict(interval=1))
randomness = dict(seed=0)
"""


def _test_metrics(monkeypatch, argv: list[str]) -> dict:
    """Run tools/mm_test.py in this process; the metrics ``Runner.test`` returned."""
    seen: list[dict] = []
    real_test = Runner.test
    monkeypatch.setattr(Runner, "test", lambda self: seen.append(real_test(self)) or seen[-1])
    import_tool("mm_test").main(argv)
    monkeypatch.undo()
    assert len(seen) == 1
    return seen[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """tools/mm_train.py with EMA; the hook publishes at the end. A visualizer of its own: under
    mmdet's shared name ``visualizer`` the runner would reuse the global instance an earlier
    test made and log its scalars into that test's folder (mmengine keeps one per name)."""
    root = tmp_path_factory.mktemp("mm_publish")
    config = root / "tiny_shapes.py"
    config.write_text(TINY_CONFIG)
    work = root / "work"
    torch.manual_seed(0)
    tool = import_tool("mm_train")
    argv = [str(config), "--work-dir", str(work), "--cfg-options", f"visualizer.name={root.name}"]
    status = run_forked(lambda: tool.main(argv), root / "log")
    assert exit_code(status) == 0, (root / "log").read_text()[-3000:]
    published = sorted(work.glob("tiny_shapes-*.pth"))
    assert len(published) == 1, sorted(os.listdir(work))
    return config, work, published[0]


def test_hook_publishes_the_evaluated_ema_weights(trained):
    _, work, published = trained
    sha = check_published_name(published)  # the name carries the file's sha256 prefix
    assert published.name == f"tiny_shapes-{sha[:8]}.pth"
    ckpt = torch.load(published, map_location="cpu", weights_only=True)  # no allow-list needed
    assert set(ckpt) == {"state_dict", "meta"}  # no optimizer / schedulers / message hub / EMA copy
    assert set(load_checkpoint_file(published)) == {"state_dict", "meta"}
    full = load_checkpoint_file(work / "epoch_1.pth")
    # EMAHook keeps the average in state_dict, the trained weights in ema_state_dict
    assert set(ckpt["state_dict"]) == set(full["state_dict"])
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(value, full["state_dict"][key]), key
    raw = full["ema_state_dict"]
    assert any(
        not torch.equal(v, raw["module." + k]) for k, v in ckpt["state_dict"].items()
    )  # the average differs from the trained weights after 2 iterations
    meta = ckpt["meta"]
    assert_plain(meta)
    assert meta["framework"] == "mmdetection" and meta["publish_format"] == 1
    assert (meta["epoch"], meta["iter"]) == (1, 2)
    assert meta["ema"]["applied"] is True and meta["ema"]["steps"] == 2
    assert list(meta["dataset_meta"]["classes"]) == list(SHAPES_CLASSES)
    assert "efficientdet_test" in meta["cfg"]
    assert {"torch", "mmdet", "mmengine", "mmcv", "plugins"} <= set(meta["versions"])
    assert set(meta["metrics"]) >= {"coco/bbox_mAP", "coco/bbox_mAP_50"}


def test_mm_test_reproduces_the_reported_metrics(trained, monkeypatch, tmp_path):
    config, _, published = trained
    reported = torch.load(published, weights_only=True)["meta"]["metrics"]
    assert reported["coco/bbox_mAP_50"] > 0  # something to reproduce
    got = _test_metrics(monkeypatch, [str(config), str(published), "--work-dir", str(tmp_path)])
    assert got == reported  # exactly the metrics the training's final validation logged


def test_init_detector_and_inferencer_load_it_as_is(trained):
    config, _, published = trained
    image = sorted(Path(ensure_shapes_dataset().val_images).glob("*"))[0]
    model = init_detector(str(config), str(published), device="cpu")
    assert list(model.dataset_meta["classes"]) == list(SHAPES_CLASSES)  # from meta
    state = torch.load(published, weights_only=True)["state_dict"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    result = inference_detector(model, str(image)).pred_instances
    assert len(result) > 0
    inferencer = DetInferencer(model=str(config), weights=str(published), device="cpu")
    pred = inferencer(str(image), return_datasamples=True)["predictions"][0].pred_instances
    assert torch.equal(pred.bboxes, result.bboxes) and torch.equal(pred.scores, result.scores)


def test_publish_tool_on_a_training_checkpoint(trained, tmp_path, capsys):
    config, work, published = trained
    tool = import_tool("publish_model")
    out = tmp_path / "zoo" / "tiny.pth"
    assert tool.main([str(config), str(work / "epoch_1.pth"), str(out)]) == 0
    made = sorted(out.parent.glob("tiny-*.pth"))
    assert len(made) == 1 and check_published_name(made[0])
    assert str(made[0]) in capsys.readouterr().out
    ours = torch.load(made[0], weights_only=True)
    hooks = torch.load(published, weights_only=True)
    assert set(ours) == {"state_dict", "meta"}
    for key, value in hooks["state_dict"].items():  # the same EMA weights as the hook's file
        assert torch.equal(ours["state_dict"][key], value), key
    meta = ours["meta"]
    assert_plain(meta)
    assert meta["metrics"] == hooks["meta"]["metrics"]  # found in the run's scalars.json
    assert meta["source"] == "epoch_1.pth" and meta["ema"]["applied"] is True
    # --no-ema: the trained weights, from ema_state_dict
    assert tool.main([str(config), str(work / "epoch_1.pth"), str(out), "--no-ema"]) == 0
    raw = [p for p in out.parent.glob("tiny-*.pth") if p != made[0]]
    assert len(raw) == 1
    full = load_checkpoint_file(work / "epoch_1.pth")
    raw_state = torch.load(raw[0], weights_only=True)["state_dict"]
    assert all(torch.equal(v, full["ema_state_dict"]["module." + k]) for k, v in raw_state.items())
    # a Detectron2 YAML config does not fit an mmengine checkpoint: one line, exit 2
    yaml = REPO / "configs" / "demo" / "efficientdet_shapes.yaml"
    assert tool.main([str(yaml), str(work / "epoch_1.pth"), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mmengine checkpoint" in err[0] and "YAML" in err[0]
    assert len(list(out.parent.iterdir())) == 2  # nothing else written
