"""tools/mm_train.py and tools/mm_test.py: a tiny real run on Shapes, resume, and bad input."""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
from pathlib import Path

import mmdet.models  # noqa: F401  (installed by tools/setup_env.sh; fail loudly if broken)
import pytest

import plugins.mm  # noqa: F401  (allow-list of mmengine checkpoint types)
from plugins.safe_load import load_checkpoint_file

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "tools" / "mm_train.py"
TEST = REPO / "tools" / "mm_test.py"
DEMO = REPO / "configs" / "mmdet" / "demo" / "efficientdet_shapes.py"
D0 = REPO / "configs" / "mmdet" / "efficientdet_d0.py"

# 4 train images in 2 iterations per epoch, 4 val images, no worker processes
TINY = [
    "train_dataloader.dataset.indices=4",
    "train_dataloader.batch_size=2",
    "train_dataloader.num_workers=0",
    "train_dataloader.persistent_workers=False",
    "val_dataloader.dataset.indices=4",
    "val_dataloader.batch_size=2",
    "val_dataloader.num_workers=0",
    "val_dataloader.persistent_workers=False",
    "test_dataloader.dataset.indices=4",
    "test_dataloader.batch_size=2",
    "test_dataloader.num_workers=0",
    "test_dataloader.persistent_workers=False",
    "train_cfg.val_interval=1",
    "default_hooks.checkpoint.interval=1",
    "default_hooks.logger.interval=1",
    "randomness.seed=0",
]


def _run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "tools"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "tools"))
    return module


def test_train_evaluate_resume_and_test(tmp_path):
    work = tmp_path / "work"
    first = _run(
        TRAIN,
        str(DEMO),
        "--work-dir",
        str(work),
        "--cfg-options",
        "train_cfg.max_epochs=1",
        *TINY,
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr[-4000:]
    log = first.stdout + first.stderr
    assert "coco/bbox_mAP_50" in log  # CocoMetric ran on the val split
    ckpt1 = load_checkpoint_file(work / "epoch_1.pth")
    assert (ckpt1["meta"]["epoch"], ckpt1["meta"]["iter"]) == (1, 2)
    assert any(k.startswith("bbox_head.class_net.") for k in ckpt1["state_dict"])

    second = _run(
        TRAIN,
        str(DEMO),
        "--work-dir",
        str(work),
        "--resume",
        "--cfg-options",
        "train_cfg.max_epochs=2",
        *TINY,
        cwd=tmp_path,
    )
    assert second.returncode == 0, second.stderr[-4000:]
    log = second.stdout + second.stderr
    assert "resumed epoch: 1, iter: 2" in log
    ckpt2 = load_checkpoint_file(work / "epoch_2.pth")
    assert (ckpt2["meta"]["epoch"], ckpt2["meta"]["iter"]) == (2, 4)

    out = tmp_path / "preds.pkl"
    test = _run(
        TEST,
        str(DEMO),
        str(work / "epoch_2.pth"),
        "--work-dir",
        str(tmp_path / "t"),
        "--out",
        str(out),
        "--cfg-options",
        *TINY,
        cwd=tmp_path,
    )
    assert test.returncode == 0, test.stderr[-4000:]
    assert "coco/bbox_mAP" in test.stdout + test.stderr
    with open(out, "rb") as f:
        preds = pickle.load(f)
    assert len(preds) == 4
    for p in preds:
        h, w = p["ori_shape"]
        boxes, scores = p["pred_instances"]["bboxes"], p["pred_instances"]["scores"]
        assert (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all() and (boxes >= 0).all()
        assert ((scores >= 0) & (scores <= 1)).all()


def _expect_exit(tool, argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        tool.main(argv)
    assert info.value.code not in (0, None)
    return capsys.readouterr().err


def test_unknown_model_type_exits_naming_it(capsys):
    train = _load_tool("mm_train")
    err = _expect_exit(train, [str(DEMO), "--cfg-options", "model.type=NoSuchDetector"], capsys)
    assert "unknown model type 'NoSuchDetector'" in err and "model.type" in err
    err = _expect_exit(train, [str(DEMO), "--cfg-options", "model.backbone.type=NoSuchNet"], capsys)
    assert "'NoSuchNet'" in err and "model.backbone.type" in err


def test_missing_data_root_exits_with_path_and_shapes_hint(capsys, tmp_path):
    train = _load_tool("mm_train")
    missing = str(tmp_path / "no_coco") + "/"
    err = _expect_exit(
        train, [str(D0), "--cfg-options", f"train_dataloader.dataset.data_root={missing}"], capsys
    )
    assert missing in err and "data_root" in err
    assert "tools/mm_train.py configs/mmdet/demo/efficientdet_shapes.py" in err
    assert "configs/mmdet/own_data/efficientdet_d0_coco.py" in err


def test_corrupt_checkpoint_exits_naming_it(capsys, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    test = _load_tool("mm_test")
    err = _expect_exit(test, [str(DEMO), str(bad)], capsys)
    assert str(bad) in err and "corrupt" in err
    err = _expect_exit(test, [str(DEMO), str(tmp_path / "absent.pth")], capsys)
    assert "not found" in err and "absent.pth" in err
    train = _load_tool("mm_train")
    err = _expect_exit(train, [str(DEMO), "--resume", str(bad)], capsys)
    assert str(bad) in err and "corrupt" in err


def test_cli_error_is_a_nonzero_exit_with_message(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00" * 64)
    proc = _run(TEST, str(DEMO), str(bad), cwd=tmp_path)
    assert proc.returncode == 2
    assert "mm_test: error:" in proc.stderr and "corrupt" in proc.stderr


def test_amp_flag_switches_the_optim_wrapper():
    train = _load_tool("mm_train")
    args = train.parse_args([str(DEMO), "--amp", "--auto-scale-lr"])
    cfg = train.build_train_config(args)
    assert cfg.optim_wrapper.type == "AmpOptimWrapper"
    assert cfg.optim_wrapper.loss_scale == "dynamic"
    args = train.parse_args([str(D0), "--auto-scale-lr"])
    with pytest.raises(train.ConfigProblem, match="data root"):
        train.build_train_config(args)
