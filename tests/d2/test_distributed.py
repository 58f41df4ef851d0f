"""Two CPU processes (gloo) through tools/train_net.py --num-gpus 2.

Detectron2's own ``launch()`` starts them where it supports CPU (after v0.6); with v0.6 (NCCL
only) :func:`plugins.d2.launch.launch` starts the gloo workers the same way. Either way the
model's DDP wrapper must get no ``device_ids`` on CPU (:class:`plugins.d2.engine.Trainer`).
"""

from __future__ import annotations

import importlib
import json
import os

import pytest
import torch

from plugins.d2.launch import cpu_launch_problem, launcher_supports_cpu
from tests.d2.test_train_net import DEMO, TINY, run
from tests.own_coco import write_own_coco

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="CPU processes: a visible GPU makes the launcher use NCCL"
)


def test_two_gloo_processes_train_and_evaluate(tmp_path):
    data = write_own_coco(tmp_path / "data")
    out = str(tmp_path / "out")
    r = run(
        "--config-file", DEMO, "--num-gpus", "2", "--dist-url", "auto",
        "--coco-dataset", "my_train", data.train_json, data.train_images,
        "--coco-dataset", "my_val", data.val_json, data.val_images,
        "DATASETS.TRAIN", "('my_train',)", "DATASETS.TEST", "('my_val',)",
        *TINY, "MODEL.EFFICIENTDET.NUM_CLASSES", "3", "SOLVER.MAX_ITER", "2",
        "SOLVER.IMS_PER_BATCH", "4",  # 2 per process: BatchNorm needs 2 values on 1x1 P7
        "MODEL.DEVICE", "cpu", "OUTPUT_DIR", out,
    )  # fmt: skip
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert "World size: 2" in log  # Detectron2's default_setup, on each process
    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu")
    assert ckpt["iteration"] == 1
    # each process ran inference on its half of my_val; rank 0 gathered both halves
    with open(os.path.join(out, "inference", "coco_instances_results.json")) as f:
        predicted = {d["image_id"] for d in json.load(f)}
    with open(data.val_json) as f:
        assert predicted == {img["id"] for img in json.load(f)["images"]}


def test_launch_capability_is_detected():
    # v0.6 (the registry's copy) is NCCL-only, later versions start gloo without a GPU;
    # either way our launch() can start CPU processes, so nothing is refused here
    source = open(importlib.import_module("detectron2.engine.launch").__file__).read()
    assert launcher_supports_cpu() == ("GLOO" in source.upper())
    assert cpu_launch_problem(2, "cpu") is None
    assert cpu_launch_problem(1, "cuda") is None
