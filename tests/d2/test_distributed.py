"""Two CPU processes (gloo) through tools/train_net.py --num-gpus 2, on a user's COCO json.

Detectron2's own ``launch()`` starts them where it supports CPU (after v0.6); with v0.6 (NCCL
only) :func:`plugins.d2.launch.launch` starts the gloo workers the same way. Either way the
model's DDP wrapper must get no ``device_ids`` on CPU (:class:`plugins.d2.engine.Trainer`).
The run also is the end-to-end test of ``--coco-dataset`` (tests/d2/test_own_data.py checks
the rest in-process): one training run serves both, to keep the suite short.
"""

from __future__ import annotations

import importlib
import json
import os

import torch

from plugins.d2.launch import cpu_launch_problem, launcher_supports_cpu
from tests.d2.test_train_net import DEMO, TINY, ap_line, run
from tests.own_coco import CATEGORIES, write_own_coco


def test_two_gloo_processes_train_and_evaluate_own_coco_json(tmp_path):
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
        env={"CUDA_VISIBLE_DEVICES": ""},  # CPU processes even where a GPU is visible
    )  # fmt: skip
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert "World size: 2" in log  # Detectron2's default_setup, on each process
    assert "Evaluation results for my_val" in log
    float(ap_line(log).split(",")[0])
    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu")
    assert ckpt["iteration"] == 1
    # 9 anchors x 3 classes in the class head's last conv
    assert ckpt["model"]["head.class_net.predict.pw.bias"].numel() == 9 * 3
    # each process ran inference on its half of my_val and rank 0 gathered both halves; the
    # detections carry the json's own category ids (3, 5, 8) and image ids
    with open(os.path.join(out, "inference", "coco_instances_results.json")) as f:
        results = json.load(f)
    with open(data.val_json) as f:
        assert {d["image_id"] for d in results} == {img["id"] for img in json.load(f)["images"]}
    assert {d["category_id"] for d in results} <= {cat_id for cat_id, _ in CATEGORIES}
    # the run's config.yaml names the datasets, so it can be evaluated again as it is
    with open(os.path.join(out, "config.yaml")) as f:
        saved = f.read()
    assert "my_train" in saved and data.train_json in saved


def test_launch_capability_is_detected():
    # v0.6 (the registry's copy) is NCCL-only, later versions start gloo without a GPU;
    # either way our launch() starts CPU processes, so nothing is refused without a GPU
    source = open(importlib.import_module("detectron2.engine.launch").__file__).read()
    assert launcher_supports_cpu() == ("GLOO" in source.upper())
    assert cpu_launch_problem(1, "cpu") is None and cpu_launch_problem(2, "cuda") is None
    problem = cpu_launch_problem(2, "cpu")
    assert (problem is None) == (not torch.cuda.is_available())
