"""tools/train_net.py: divergence guard and bit-exact resume after a real kill -9.

Every run is ``tools/train_net.py``'s ``run()`` in a child forked from this process (Detectron2
is imported once; each child has its own loggers and dies with its run): the tiny
``efficientdet_test`` variant, 2 images per batch, AdamW, EMA, a checkpoint every 2 iterations.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import plugins.d2  # noqa: F401  (first: stands in for a missing detectron2._C)

# isort: split
from detectron2.engine import HookBase

from plugins.d2.resume import ResumableTrainLoader
from plugins.safe_load import load_checkpoint_file
from tests.d2.test_train_net import DEMO, TINY
from tests.forked import exit_code, run_forked
from tests.mm.test_tools import _load_tool

RUN = [*TINY, "SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "6"]


def _run(argv: list[str], log: Path, kill_at: int | None = None) -> int:
    """``train_net.py argv`` in a child; with ``kill_at``, the child SIGKILLs itself after that
    iteration. Returns the exit code (or -signal)."""
    tool = _load_tool("train_net")

    def main() -> int:
        if kill_at is not None:
            build_hooks = tool.Trainer.build_hooks

            class Kill(HookBase):
                def after_step(self) -> None:
                    if self.trainer.iter == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)

            tool.Trainer.build_hooks = lambda self: [*build_hooks(self), Kill()]
        return tool.run(argv)

    return exit_code(run_forked(main, log))


def _tensors(ckpt: dict) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in ckpt["model"].items()}
    out.update({f"ema.{k}": v for k, v in ckpt["ema"]["state"].items()})
    # Detectron2 0.6: top-level "optimizer" (added by plugins.d2.resume); later versions keep
    # it in the trainer's own state
    optimizer = ckpt.get("optimizer") or ckpt["trainer"]["_trainer"]["optimizer"]
    for index, state in optimizer["state"].items():
        out.update({f"optimizer.{index}.{k}": v for k, v in state.items() if torch.is_tensor(v)})
    return out


def test_resume_after_kill_is_bit_exact(tmp_path, single_thread):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(["--config-file", DEMO, *RUN, "OUTPUT_DIR", str(a)], tmp_path / "a.log") == 0
    # killed after iteration 4, i.e. after the checkpoint of iteration 3
    killed = _run(["--config-file", DEMO, *RUN, "OUTPUT_DIR", str(b)], tmp_path / "b.log", 4)
    assert killed == -signal.SIGKILL
    assert (b / "last_checkpoint").read_text().strip() == "model_0000003.pth"
    assert not (b / "model_final.pth").exists()
    resumed = _run(
        ["--config-file", DEMO, "--resume", *RUN, "OUTPUT_DIR", str(b)], tmp_path / "c.log"
    )
    assert resumed == 0, (tmp_path / "c.log").read_text()[-3000:]
    assert "Starting training from iteration 4" in (tmp_path / "c.log").read_text()

    ca = load_checkpoint_file(str(a / "model_final.pth"))
    cb = load_checkpoint_file(str(b / "model_final.pth"))
    assert ca["iteration"] == cb["iteration"] == 5
    ta, tb = _tensors(ca), _tensors(cb)
    assert ta.keys() == tb.keys() and len(ta) > 100
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def _bad_checkpoints(out: Path) -> list[str]:
    bad = []
    for path in out.glob("*.pth"):
        for name, value in load_checkpoint_file(str(path))["model"].items():
            if value.is_floating_point() and not bool(value.abs().le(1e8).all()):
                bad.append(f"{path.name}:{name}")
    return bad


#: Learning rates that make the demo diverge, and the one line each must end with (shared with
#: the LazyConfig tool's test).
DIVERGENCE_CASES = [
    # the weights explode while the loss is still finite: the first checkpoint is refused
    ("1e4", "refusing to write checkpoint model_0000001: "),
    # NaN loss: Detectron2's FloatingPointError, as one line with the learning rate
    ("1e30", "training diverged at iteration 1: the loss is not finite (losses {"),
]


@pytest.mark.parametrize("lr, message", DIVERGENCE_CASES)
def test_diverging_run_stops_with_one_line(tmp_path, single_thread, lr, message):
    out, log = tmp_path / "out", tmp_path / "log"
    argv = ["--config-file", DEMO, *RUN, "SOLVER.BASE_LR", lr, "SOLVER.CLIP_GRADIENTS.ENABLED"]
    argv += ["False", "OUTPUT_DIR", str(out)]
    assert _run(argv, log) == 1
    text = log.read_text()
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("train_net.py:")]
    assert len(errors) == 1 and errors[0].startswith("train_net.py: error: training diverged")
    assert message in errors[0] and re.search(r"\blr [0-9]", errors[0])
    assert errors[0].endswith("no checkpoint was written")
    assert not _bad_checkpoints(out) and not (out / "model_final.pth").exists()


class _NoisyMapper:
    """Stands in for DatasetMapper: the image index and draws from all three generators."""

    def __call__(self, d: dict) -> dict:
        import random

        return {
            "i": d["i"],
            "draws": (random.random(), float(np.random.rand()), float(torch.rand(()))),
        }


def _batches(loader: ResumableTrainLoader, start: int, count: int) -> list:
    loader.start_iter = start
    it = iter(loader)
    return [next(it) for _ in range(count)]


def test_loader_batches_depend_only_on_seed_and_iteration(single_thread):
    # 5 landscape + 3 portrait images: batches never mix them, every image is seen once per
    # pass of its group, and batch k is the same from any start and with worker processes
    dicts = [
        {"i": i, "width": 20 if i < 5 else 10, "height": 10 if i < 5 else 20} for i in range(8)
    ]
    loader = ResumableTrainLoader(dicts, _NoisyMapper(), batch_size=2, seed=7)
    first = _batches(loader, 0, 12)
    for batch in first:
        assert len({d["i"] < 5 for d in batch}) == 1
    landscape = [d["i"] for batch in first for d in batch if d["i"] < 5]
    assert sorted(landscape[:5]) == [0, 1, 2, 3, 4]
    assert _batches(loader, 7, 5) == first[7:]
    loader.num_workers = 2
    assert _batches(loader, 3, 4) == first[3:7]
    loader.seed = 8
    loader.num_workers = 0
    assert _batches(loader, 0, 12) != first
