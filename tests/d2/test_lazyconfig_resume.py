"""tools/lazyconfig_train_net.py resumes bit-exactly after a real kill -9 (as tools/train_net.py,
tests/d2/test_guard_resume.py).

Every run is the tool's ``run()`` in a child forked from this process (tests/forked.py): the
EfficientDet demo LazyConfig with the tiny ``efficientdet_test`` variant, 2 images per batch,
AdamW, EMA, a checkpoint every 2 iterations, no evaluation.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest
import torch

import plugins.d2  # noqa: F401  (first: stands in for a missing detectron2._C)

# isort: split
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_train_loader
from detectron2.data.samplers import RandomSubsetTrainingSampler, TrainingSampler
from detectron2.engine import HookBase
from detectron2.engine.train_loop import TrainerBase

from plugins.d2.resume import ExactResumeHook, ResumableTrainLoader, build_lazy_train_loader
from plugins.safe_load import load_checkpoint_file
from tests.d2.test_guard_resume import _NoisyMapper, _tensors
from tests.d2.test_lazyconfig import DEMO, TINY
from tests.forked import exit_code, run_forked
from tests.zoo_checks import import_tool

RUN = [o for o in TINY if not o.startswith("train.max_iter=")]
RUN += [
    "train.max_iter=6",
    "train.checkpointer.period=2",
    "dataloader.test.dataset.names=[]",  # no evaluation
    "train.publish.enabled=False",
]


def _run(argv: list[str], log: Path, kill_at: int | None = None, seen: list | None = None) -> int:
    """``lazyconfig_train_net.py argv`` in a child; with ``kill_at``, the child SIGKILLs itself
    after that iteration. Returns the exit code (or -signal)."""
    tool = import_tool("lazyconfig_train_net")

    def main() -> int:
        register = TrainerBase.register_hooks

        class Kill(HookBase):
            def before_train(self) -> None:  # what the trainer was given, in the log
                kinds = [type(h).__name__ for h in self.trainer._hooks]
                print("hooks:", kinds, "loader:", type(self.trainer.data_loader).__name__)

            def after_step(self) -> None:
                if self.trainer.iter == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

        # only in this child: the hooks of the run, then ours
        TrainerBase.register_hooks = lambda self, hooks: register(self, [*hooks, Kill()])
        return tool.run(argv)

    return exit_code(run_forked(main, log))


def test_lazy_resume_after_kill_is_bit_exact(tmp_path, single_thread):
    a, b = tmp_path / "a", tmp_path / "b"
    log_a = tmp_path / "a.log"
    assert _run(["--config-file", DEMO, *RUN, f"train.output_dir={a}"], log_a) == 0, (
        log_a.read_text()[-3000:]
    )
    # killed after iteration 4, i.e. after the checkpoint of iteration 3
    killed = _run(["--config-file", DEMO, *RUN, f"train.output_dir={b}"], tmp_path / "b.log", 4)
    assert killed == -signal.SIGKILL
    assert (b / "last_checkpoint").read_text().strip() == "model_0000003.pth"
    assert not (b / "model_final.pth").exists()
    log_c = tmp_path / "c.log"
    resumed = _run(["--config-file", DEMO, "--resume", *RUN, f"train.output_dir={b}"], log_c)
    assert resumed == 0, log_c.read_text()[-3000:]
    assert "Starting training from iteration 4" in log_c.read_text()

    ca = load_checkpoint_file(str(a / "model_final.pth"))
    cb = load_checkpoint_file(str(b / "model_final.pth"))
    assert ca["iteration"] == cb["iteration"] == 5
    # Detectron2 0.6's SimpleTrainer keeps the optimizer in its own state
    ta, tb = (_tensors({**c, "optimizer": c["trainer"]["optimizer"]}) for c in (ca, cb))
    assert ta.keys() == tb.keys() and len(ta) > 100
    assert any(k.startswith("optimizer.") for k in ta) and any(k.startswith("ema.") for k in ta)
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    # the exact-resume hook comes first, the loader can start at any iteration
    hooks_line = next(line for line in log_a.read_text().splitlines() if line.startswith("hooks:"))
    assert hooks_line.startswith(f"hooks: ['{ExactResumeHook.__name__}', ")
    assert hooks_line.endswith(f"loader: {ResumableTrainLoader.__name__}")
    # the run's seed (train.seed=3) is in the checkpoint, with the data layout
    assert ca["trainer"]["hooks"]["ExactResumeHook"] == {
        "seed": 3,
        "batch_size": 2,
        "world_size": 1,
        "num_images": cb["trainer"]["hooks"]["ExactResumeHook"]["num_images"],
    }


def _dicts(n: int) -> list[dict]:
    """``n`` dataset dicts: 4 landscape images, then portrait ones."""
    return [{"i": i, "width": 20 if i < 4 else 10, "height": 10 if i < 4 else 20} for i in range(n)]


def _node(**kwargs):
    return L(build_detection_train_loader)(
        dataset=L(_dicts)(n=6), mapper=L(_NoisyMapper)(), **kwargs
    )


def test_lazy_train_loader_reads_the_node(caplog):
    loader = build_lazy_train_loader(_node(total_batch_size=2), seed=7)
    # Detectron2's defaults: aspect-ratio grouping on, no workers; shuffled passes
    assert isinstance(loader, ResumableTrainLoader)
    assert (loader.batch_size, loader.num_workers, loader.seed) == (2, 0, 7)
    assert loader.groups == [[0, 1, 2, 3], [4, 5]] and loader.shuffle
    assert isinstance(loader.mapper, _NoisyMapper) and len(loader) == 6
    node = _node(total_batch_size=3, aspect_ratio_grouping=False, num_workers=2)
    node.sampler = L(TrainingSampler)(size=6, shuffle=False)
    loader = build_lazy_train_loader(node, seed=7)
    assert (loader.batch_size, loader.num_workers, loader.groups) == (3, 2, [list(range(6))])
    assert not loader.shuffle
    assert [d["i"] for d in next(iter(loader))] == [0, 1, 2]
    with pytest.raises(ValueError, match="dataloader.train.total_batch_size: missing"):
        build_lazy_train_loader(_node(), seed=7)
    # a sampler it cannot replay: Detectron2's own loader, with a warning
    node = _node(total_batch_size=2, aspect_ratio_grouping=False)
    node.sampler = L(RandomSubsetTrainingSampler)(size=6, subset_ratio=0.5)
    with caplog.at_level(logging.WARNING, logger="plugins.d2.resume"):
        loader = build_lazy_train_loader(node, seed=7)
    assert not isinstance(loader, ResumableTrainLoader) and len(next(iter(loader))) == 2
    assert "dataloader.train.sampler is not a TrainingSampler" in caplog.text
