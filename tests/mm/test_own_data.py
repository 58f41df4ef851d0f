"""Your own COCO-format data through tools/mm_train.py: configs/mmdet/own_data/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mmdet.models  # noqa: F401  (installed by tools/setup_env.sh; fail loudly if broken)
import pytest
import torch
from mmengine.config import Config

from tests.own_coco import CLASSES, write_own_coco

REPO = Path(__file__).resolve().parents[2]
OWN = REPO / "configs" / "mmdet" / "own_data"
# where the demo config names its variant: the tiny test variant keeps the run short
TINY_VARIANT_AT = ("backbone", "neck", "bbox_head", "bbox_head.anchor_generator")


def _user_copy(config: Path, dest: Path, data, classes=CLASSES) -> Path:
    """What a user does: copy the config, point `_base_` at the recipe, edit the block."""
    lines = []
    for line in config.read_text().splitlines():
        if line.startswith("_base_ = "):
            base = (config.parent / line.split('"')[1]).resolve()
            line = f'_base_ = "{base}"'
        elif line.startswith("data_root = "):
            line = f'data_root = "{data.root}/"'
        elif line.startswith("train_ann, train_images = "):
            line = 'train_ann, train_images = "train/ann.json", "train/images/"'
        elif line.startswith("val_ann, val_images = "):
            line = 'val_ann, val_images = "val/ann.json", "val/images/"'
        elif line.startswith("classes = "):
            line = f"classes = {tuple(classes)!r}"
        lines.append(line)
    dest.write_text("\n".join(lines) + "\n")
    return dest


@pytest.mark.parametrize("name", ["efficientdet_d0_coco.py", "efficientdet_demo_coco.py"])
def test_one_block_sets_classes_everywhere(name, tmp_path):
    data = write_own_coco(tmp_path / "data")
    cfg = Config.fromfile(_user_copy(OWN / name, tmp_path / name, data, classes=("a", "b")))
    assert cfg.model.bbox_head.num_classes == 2
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        ds = cfg[loader].dataset
        assert ds.type == "PluginsCocoDataset" and ds.metainfo.classes == ("a", "b")
        assert ds.data_root == data.root + "/" and "split" not in ds
    assert cfg.val_evaluator.ann_file == data.val_json
    assert cfg.val_evaluator.type == "PluginsCocoMetric" and "split" not in cfg.val_evaluator


def test_trains_and_evaluates_own_coco_json(tmp_path):
    data = write_own_coco(tmp_path / "data")
    config = _user_copy(OWN / "efficientdet_demo_coco.py", tmp_path / "mine.py", data)
    work = tmp_path / "work"
    options = [
        *(f"model.{m}.variant.base=efficientdet_test" for m in TINY_VARIANT_AT),
        "train_cfg.max_iters=2",
        "train_cfg.val_interval=2",
        "default_hooks.checkpoint.interval=2",
        "default_hooks.logger.interval=1",
        "train_dataloader.batch_size=2",
        "train_dataloader.num_workers=0",
        "train_dataloader.persistent_workers=False",
        "val_dataloader.batch_size=2",
        "val_dataloader.num_workers=0",
        "val_dataloader.persistent_workers=False",
    ]
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "mm_train.py"), str(config), "--work-dir", str(work)]
        + ["--cfg-options", *options],
        cwd=tmp_path,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "coco/bbox_mAP_50" in log  # CocoMetric on the val json
    ckpt = torch.load(work / "iter_2.pth", map_location="cpu", weights_only=False)
    assert ckpt["meta"]["iter"] == 2
    # 9 anchors x 3 classes in the class head's last conv
    assert ckpt["state_dict"]["bbox_head.class_net.predict.pw.bias"].numel() == 9 * 3
    assert tuple(ckpt["meta"]["dataset_meta"]["classes"]) == CLASSES
