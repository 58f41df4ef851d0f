"""Two-process CPU (gloo) training through torchrun and tools/mm_train.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mmdet.models  # noqa: F401  (installed by tools/setup_env.sh; fail loudly if broken)

import plugins.mm  # noqa: F401  (allow-list of mmengine checkpoint types)
from plugins.safe_load import load_checkpoint_file

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "mmdet" / "demo" / "efficientdet_shapes.py"


def test_two_process_gloo_training(tmp_path):
    work = tmp_path / "work"
    options = [
        "train_dataloader.dataset.indices=8",  # 4 images per process, 2 per batch: 2 iters
        "train_dataloader.batch_size=2",
        "train_dataloader.num_workers=0",
        "train_dataloader.persistent_workers=False",
        "val_dataloader.dataset.indices=4",
        "val_dataloader.batch_size=2",
        "val_dataloader.num_workers=0",
        "val_dataloader.persistent_workers=False",
        "train_cfg.max_epochs=1",
        "default_hooks.checkpoint.interval=1",
        "default_hooks.logger.interval=1",
        "env_cfg.dist_cfg.backend=gloo",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29500 + os.getpid() % 1000),
        str(REPO / "tools" / "mm_train.py"),
        str(DEMO),
        "--launcher",
        "pytorch",
        "--work-dir",
        str(work),
        "--cfg-options",
        *options,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    (tmp_path / "run.log").write_text(log)
    # mmengine's runtime-environment banner (world size is printed as "GPU number")
    assert "Distributed training: True" in log and "GPU number: 2" in log
    ckpt = load_checkpoint_file(work / "epoch_1.pth")
    # 8 images / (2 processes x 2 per batch) = 2 iterations, all processes in step
    assert (ckpt["meta"]["epoch"], ckpt["meta"]["iter"]) == (1, 2)
    assert "coco/bbox_mAP_50" in log
