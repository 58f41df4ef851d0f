"""tools/mm_train.py: divergence guard and bit-exact resume after a real kill -9.

Tiny runs of the EfficientDet demo config (``efficientdet_test`` variant, 4 Shapes images,
2 iterations per epoch, 2 epochs, validation every epoch, EMA, ``max_keep_ckpts=1``). The uninterrupted
and resumed runs run in this process; the killed one is a forked child process (mmdet already
imported) that sends itself SIGKILL after an iteration.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook

from plugins.safe_load import load_checkpoint_file
from tests.forked import run_forked
from tests.mm.test_tools import _load_tool

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "mmdet" / "demo" / "efficientdet_shapes.py"

TINY_CONFIG = f"""
_base_ = {str(DEMO)!r}
variant = dict(base="efficientdet_test", anchor_scale=3.0)
model = dict(
    backbone=dict(variant=variant),
    neck=dict(variant=variant),
    bbox_head=dict(variant=variant, anchor_generator=dict(variant=variant)),
)
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(indices=4)
)
val_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(indices=2)
)
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=2, val_interval=1)
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=1), logger=dict(interval=1))
visualizer = dict(vis_backends=[])
"""


@HOOKS.register_module()
class _GuardTestKillAfterIteration(Hook):
    """SIGKILL the process after iteration ``kill_at`` (1-based): a real kill -9."""

    priority = "LOWEST"

    def __init__(self, kill_at: int) -> None:
        self.kill_at = kill_at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mm_guard") / "tiny.py"
    path.write_text(TINY_CONFIG)
    return path


def _train(config: Path, work: Path, *extra: str) -> None:
    _load_tool("mm_train").main([str(config), "--work-dir", str(work), *extra])


def _train_killed(config: Path, work: Path, kill_at: int) -> int:
    """Train in a forked child that kills itself after ``kill_at``; its wait status."""

    def main() -> None:
        tool = _load_tool("mm_train")
        build = tool.build_train_config

        def build_train_config(args):
            cfg = build(args)
            hook = dict(type="_GuardTestKillAfterIteration", kill_at=kill_at)
            cfg.custom_hooks = [*cfg.custom_hooks, hook]
            return cfg

        tool.build_train_config = build_train_config
        tool.main([str(config), "--work-dir", str(work)])

    return run_forked(main, work.parent / f"{work.name}.log")


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith("mm_train:")]


def _tensors(ckpt: dict) -> dict[str, torch.Tensor]:
    out = {f"state_dict.{k}": v for k, v in ckpt["state_dict"].items()}
    out.update({f"ema_state_dict.{k}": v for k, v in ckpt["ema_state_dict"].items()})
    for index, state in ckpt["optimizer"]["state"].items():
        out.update({f"optimizer.{index}.{k}": v for k, v in state.items() if torch.is_tensor(v)})
    return out


def test_resume_after_kill_is_bit_exact(tiny_config, tmp_path, single_thread):
    uninterrupted, killed = tmp_path / "a", tmp_path / "b"
    _train(tiny_config, uninterrupted)

    # killed after iteration 3: the first of epoch 2, after epoch 1's checkpoint and validation
    status = _train_killed(tiny_config, killed, kill_at=3)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert (killed / "epoch_1.pth").is_file() and not (killed / "epoch_2.pth").exists()

    _train(tiny_config, killed, "--resume")
    a = load_checkpoint_file(str(uninterrupted / "epoch_2.pth"))
    b = load_checkpoint_file(str(killed / "epoch_2.pth"))
    assert (b["meta"]["epoch"], b["meta"]["iter"]) == (2, 4)
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys() and len(ta) > 100
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    assert not (killed / "epoch_1.pth").exists()  # max_keep_ckpts=1 still rotates


def test_diverging_run_stops_with_one_line_and_keeps_the_good_checkpoint(
    tiny_config, tmp_path, capsys, single_thread
):
    # epoch 1 trains at lr 1e-4; from epoch 2 on the lr is 1e4 and the weights explode
    config = tmp_path / "explode.py"
    config.write_text(
        f"_base_ = {str(tiny_config)!r}\n"
        "optim_wrapper = dict(optimizer=dict(lr=1e-4), clip_grad=None)\n"
        "param_scheduler = [dict(type='MultiStepLR', by_epoch=True, milestones=[1], gamma=1e8)]\n"
        "train_cfg = dict(val_interval=10)\n"
    )
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as info:
        _train(config, work)
    assert info.value.code == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1, err
    assert err[0].startswith("mm_train: error: training diverged")
    assert "iteration 4" in err[0] and "lr 10000" in err[0] and "epoch_1.pth" in err[0]
    # the last good checkpoint survives max_keep_ckpts=1, and nothing after it was written
    assert sorted(p.name for p in work.glob("epoch_*.pth")) == ["epoch_1.pth"]
    good = load_checkpoint_file(str(work / "epoch_1.pth"))
    assert all(
        torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point()
    )


def test_nan_loss_stops_at_its_iteration(tiny_config, tmp_path, capsys, single_thread):
    config = tmp_path / "nan.py"
    config.write_text(
        f"_base_ = {str(tiny_config)!r}\n"
        "optim_wrapper = dict(optimizer=dict(lr=1e30), clip_grad=None)\n"
        "param_scheduler = []\n"
    )
    with pytest.raises(SystemExit) as info:
        _train(config, tmp_path / "work")
    assert info.value.code == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "training diverged at iteration 2: loss nan is not finite" in err[0]
    assert "lr 1e+30" in err[0] and "no checkpoint was written" in err[0]
    assert not list((tmp_path / "work").glob("*.pth"))
