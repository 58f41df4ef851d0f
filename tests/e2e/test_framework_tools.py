"""The frameworks' own tools on our configs and checkpoints, and demo recipes that compare.

- mmdet's ``tools/train.py`` then ``tools/test.py`` (shipped inside the mmdet wheel under
  ``mmdet/.mim/tools``) on the EfficientDet demo config, unchanged, and its
  ``analysis_tools/analyze_logs.py`` (seaborn) on the training log;
- Detectron2's ``DefaultPredictor`` on that checkpoint, converted by
  ``tools/convert_checkpoint.py``;
- the Detectron2 and MMDetection demo recipes train the same number of iterations on the
  same images (same empty-image policy), so their APs compare.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path
from unittest import mock

import plugins.d2  # noqa: F401  (first: installs the detectron2._C stand-in when needed)

# isort: split
import mmdet
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor
from mmengine.config import Config
from PIL import Image

from plugins.d2 import add_plugins_config
from plugins.data.shapes import ensure_shapes_dataset
from tests.mm.test_tools import TINY

REPO = Path(__file__).resolve().parents[2]
MM_TOOLS = Path(mmdet.__file__).parent / ".mim" / "tools"
MM_DEMO = REPO / "configs" / "mmdet" / "demo" / "efficientdet_shapes.py"
D2_DEMO = REPO / "configs" / "demo" / "efficientdet_shapes.yaml"

# tests/mm/test_tools.py's options (4 images per split, 2 per batch, no workers: 2 iterations
# per epoch), one epoch without validation; the model-zoo file written at the end of training
# is evaluated on the 4 validation images
TINY_TRAIN = [*TINY, "train_cfg.max_epochs=1", "train_cfg.val_interval=1000"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


@pytest.fixture(scope="module")
def mm_checkpoint(tmp_path_factory) -> Path:
    """mmdet's own tools/train.py on the demo config; the checkpoint it wrote."""
    work = tmp_path_factory.mktemp("mm_tools")
    train = str(MM_TOOLS / "train.py")
    _run(train, str(MM_DEMO), "--work-dir", str(work), "--cfg-options", *TINY_TRAIN, cwd=work)
    return work / "epoch_1.pth"


def test_mmdet_own_train_and_test_tools_run_our_config(mm_checkpoint, tmp_path):
    assert mm_checkpoint.is_file()
    out = tmp_path / "preds.pkl"
    proc = _run(
        str(MM_TOOLS / "test.py"), str(MM_DEMO), str(mm_checkpoint),
        "--work-dir", str(tmp_path), "--out", str(out), "--cfg-options", *TINY,
        cwd=tmp_path,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert "coco/bbox_mAP_50" in log  # PluginsShapesMetric (CocoMetric) ran
    assert out.is_file() and out.stat().st_size > 0


def test_mmdet_analyze_logs_plots_the_training_loss(mm_checkpoint, tmp_path):
    # mmdet's analysis tools import seaborn (and benchmark.py psutil): setup installs both
    # (run in this process: a command-line script that only reads the log and plots)
    (scalars,) = mm_checkpoint.parent.glob("*/vis_data/scalars.json")
    out = tmp_path / "loss.png"
    argv = ["analyze_logs.py", "plot_curve", str(scalars), "--keys", "loss", "--out", str(out)]
    with mock.patch.object(sys, "argv", argv), mock.patch.dict(os.environ, MPLBACKEND="Agg"):
        runpy.run_path(str(MM_TOOLS / "analysis_tools" / "analyze_logs.py"), run_name="__main__")
    assert out.stat().st_size > 0


def test_detectron2_default_predictor_on_converted_checkpoint(mm_checkpoint, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "_convert", REPO / "tools" / "convert_checkpoint.py"
    )
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    weights = tmp_path / "model_d2.pth"
    assert convert.convert_file(mm_checkpoint, weights, to="d2") == "d2"

    cfg = get_cfg()
    add_plugins_config(cfg)
    cfg.merge_from_file(str(D2_DEMO))
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.MODEL.EFFICIENTDET.SCORE_THRESH_TEST = 0.0
    cfg.freeze()
    predictor = DefaultPredictor(cfg)
    expected = torch.load(weights, map_location="cpu", weights_only=True)["model"]
    loaded = predictor.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())

    paths = ensure_shapes_dataset()
    with open(paths.val_json) as f:
        first = json.load(f)["images"][0]
    rgb = np.asarray(Image.open(os.path.join(paths.val_images, first["file_name"])).convert("RGB"))
    instances = predictor(rgb[:, :, ::-1])["instances"]  # DefaultPredictor takes BGR
    assert instances.image_size == (first["height"], first["width"])
    assert len(instances) > 0
    boxes = instances.pred_boxes.tensor
    assert (boxes[:, 2:] >= boxes[:, :2]).all()
    assert ((instances.pred_classes >= 0) & (instances.pred_classes < 6)).all()


def _images_per_epoch(filter_empty: bool) -> int:
    with open(ensure_shapes_dataset().train_json) as f:
        coco = json.load(f)
    with_boxes = {a["image_id"] for a in coco["annotations"]}
    return len(with_boxes) if filter_empty else len(coco["images"])


@pytest.mark.parametrize("name", ["efficientdet", "retinanet", "cornernet"])
def test_demo_recipes_train_the_same_images(name):
    d2 = get_cfg()
    add_plugins_config(d2)
    d2.merge_from_file(str(REPO / "configs" / "demo" / f"{name}_shapes.yaml"))
    mm = Config.fromfile(REPO / "configs" / "mmdet" / "demo" / f"{name}_shapes.py")
    loader = mm.train_dataloader
    mm_filter = loader.dataset.get("filter_cfg", {}).get("filter_empty_gt", True)
    assert mm_filter == d2.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    assert loader.batch_size == d2.SOLVER.IMS_PER_BATCH
    per_epoch = _images_per_epoch(mm_filter)
    assert mm.train_cfg.type == "EpochBasedTrainLoop"
    iterations = mm.train_cfg.max_epochs * math.ceil(per_epoch / loader.batch_size)
    assert iterations == d2.SOLVER.MAX_ITER
    # and every batch is full: the same number of images seen
    assert mm.train_cfg.max_epochs * per_epoch == d2.SOLVER.MAX_ITER * d2.SOLVER.IMS_PER_BATCH
