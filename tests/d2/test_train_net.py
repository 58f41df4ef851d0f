"""tools/train_net.py end to end in subprocesses: train, checkpoint, resume, evaluate, errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(ROOT, "tools", "train_net.py")
DEMO = os.path.join(ROOT, "configs", "demo", "efficientdet_shapes.yaml")

# the tiny variant at 128 px, 2 images per batch, evaluation on shapes_val
TINY = [
    "MODEL.EFFICIENTDET.VARIANT", "efficientdet_test",
    "MODEL.EFFICIENTDET.FPN_CHANNELS", "0",
    "MODEL.EFFICIENTDET.FPN_REPEATS", "0",
    "MODEL.EFFICIENTDET.HEAD_REPEATS", "0",
    "MODEL.EFFICIENTDET.SCORE_THRESH_TEST", "0.0",
    "MODEL.EFFICIENTDET.TOPK_CANDIDATES_TEST", "50",
    "MODEL.EMA.ENABLED", "True",
    "INPUT.SCALE_JITTER.SIZE", "128",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
    "TEST.EVAL_PERIOD", "0",
]  # fmt: skip


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        cwd=ROOT,
        # one thread: tiny tensors gain nothing from more, and CI cores are shared
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def ap_line(log: str) -> str:
    """The last ``copypaste:`` line with the AP values (``AP,AP50,...`` header skipped)."""
    values = re.findall(r"copypaste: ([-0-9.nan,]+)\n", log)
    assert values, log[-3000:]
    return values[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("train_net"))
    first = run("--config-file", DEMO, *TINY, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", out)
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt1 = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu")
    resumed = run(
        "--config-file", DEMO, "--resume", *TINY, "SOLVER.MAX_ITER", "5", "OUTPUT_DIR", out
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return out, first, ckpt1, resumed


def test_training_writes_checkpoint_and_evaluates(trained):
    out, first, ckpt, _ = trained
    assert ckpt["iteration"] == 2  # iterations 0, 1, 2
    assert {"model", "trainer", "ema"} <= set(ckpt)  # optimizer/scheduler live in "trainer"
    assert ckpt["ema"]["num_updates"] == 3
    assert any(k.startswith("backbone.body.") for k in ckpt["model"])
    log = first.stdout + first.stderr
    assert "Evaluation results for shapes_val" in log
    assert re.search(r"eta: \S+\s+iter: 2", log)  # progress line with ETA
    assert os.path.isfile(os.path.join(out, "metrics.json"))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    float(ap_line(log).split(",")[0])  # AP printed as a number


def test_resume_continues_from_saved_iteration(trained):
    out, _, _, resumed = trained
    log = resumed.stdout + resumed.stderr
    assert "Starting training from iteration 3" in log
    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu")
    assert ckpt["iteration"] == 4
    assert ckpt["ema"]["num_updates"] == 5  # the average was restored and continued


def test_eval_only_reproduces_ap(trained):
    out, _, _, resumed = trained
    weights = os.path.join(out, "model_final.pth")
    ev = run(
        "--config-file", DEMO, "--eval-only", *TINY, "MODEL.WEIGHTS", weights,
        "OUTPUT_DIR", os.path.join(out, "eval"),
    )  # fmt: skip
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert ap_line(ev.stdout + ev.stderr) == ap_line(resumed.stdout + resumed.stderr)


def test_unknown_key_fails_clearly(tmp_path):
    r = run("--config-file", DEMO, "MODEL.EFFICIENTDET.NOPE", "1", "OUTPUT_DIR", str(tmp_path))
    assert r.returncode != 0
    assert "unknown config key MODEL.EFFICIENTDET.NOPE" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_clip_type_fails_before_training(tmp_path):
    r = run(
        "--config-file", DEMO, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "global", "OUTPUT_DIR", str(tmp_path)
    )  # fmt: skip
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("train_net.py: error: invalid config: SOLVER.CLIP_GRADIENTS.CLIP_TYPE")
    assert "full_model" in last and "Traceback" not in r.stderr
    assert not os.listdir(tmp_path)  # stopped before anything was written


def test_missing_dataset_fails_clearly(tmp_path):
    missing = str(tmp_path / "no_datasets_here")
    r = run(
        "--config-file", DEMO, "DATASETS.TRAIN", "('coco_2017_train',)", "OUTPUT_DIR", str(tmp_path),
        env={"DETECTRON2_DATASETS": missing},
    )  # fmt: skip
    assert r.returncode != 0
    assert "coco_2017_train" in r.stderr and missing in r.stderr
    assert "shapes_train" in r.stderr  # tells how to use the embedded dataset
    r = run("--config-file", DEMO, "DATASETS.TEST", "('nope_val',)", "OUTPUT_DIR", str(tmp_path))
    assert r.returncode != 0 and "'nope_val' is not registered" in r.stderr


def test_corrupt_checkpoint_fails_clearly(tmp_path):
    bad = tmp_path / "not_a_checkpoint.pth"
    bad.write_text("this is not a checkpoint\n")
    r = run(
        "--config-file", DEMO, *TINY, "SOLVER.MAX_ITER", "1", "MODEL.WEIGHTS", str(bad),
        "OUTPUT_DIR", str(tmp_path / "out"),
    )  # fmt: skip
    assert r.returncode != 0
    assert "bad checkpoint" in r.stderr and str(bad) in r.stderr
