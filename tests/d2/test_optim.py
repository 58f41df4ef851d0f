"""Optimizers of the Detectron2 adapter: SOLVER.OPTIMIZER and the joint gradient clip."""

from __future__ import annotations

import plugins.d2  # noqa: F401  (first: detectron2._C stand-in)

# isort: split
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.solver import build_optimizer as d2_build_optimizer
from torch import nn

from plugins.d2 import add_plugins_config
from plugins.d2.engine import Trainer
from plugins.d2.lazy import LazyConfigError, optimizer_with_clipping


def _cfg(optimizer: str, clip_type: str | None, clip_value: float = 10.0):
    cfg = get_cfg()
    add_plugins_config(cfg)
    cfg.SOLVER.OPTIMIZER = optimizer
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = clip_type is not None
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type or "value"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_value
    return cfg


class _Two(nn.Module):
    """Two parameters whose gradients have norms 30 and 40 (joint norm 50)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(2))
        self.b = nn.Parameter(torch.zeros(1))

    def set_grads(self) -> None:
        self.a.grad = torch.tensor([18.0, 24.0])  # norm 30
        self.b.grad = torch.tensor([40.0])


def _step(optimizer: torch.optim.Optimizer, model: _Two) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step at lr 1 from zero weights: the applied (clipped) gradients."""
    model.set_grads()
    optimizer.step()
    return -model.a.detach().clone(), -model.b.detach().clone()


def test_full_model_clip_scales_all_gradients_together():
    model = _Two()
    a, b = _step(Trainer.build_optimizer(_cfg("SGD", "full_model"), model), model)
    # joint norm 50 -> 10: every gradient times 0.2, directions kept
    torch.testing.assert_close(a, torch.tensor([3.6, 4.8]))
    torch.testing.assert_close(b, torch.tensor([8.0]))


def test_per_parameter_clip_is_detectron2s():
    model = _Two()
    a, b = _step(Trainer.build_optimizer(_cfg("SGD", "norm"), model), model)
    # each parameter on its own: 30 -> 10 and 40 -> 10
    torch.testing.assert_close(a, torch.tensor([6.0, 8.0]))
    torch.testing.assert_close(b, torch.tensor([10.0]))
    reference = _Two()
    ra, rb = _step(d2_build_optimizer(_cfg("SGD", "norm"), reference), reference)
    torch.testing.assert_close((a, b), (ra, rb))


def test_full_model_clip_under_the_limit_changes_nothing():
    model = _Two()
    a, b = _step(Trainer.build_optimizer(_cfg("SGD", "full_model", clip_value=100.0), model), model)
    torch.testing.assert_close(a, torch.tensor([18.0, 24.0]))
    torch.testing.assert_close(b, torch.tensor([40.0]))


def test_adamw_full_model_clip_matches_clipping_by_hand():
    torch.manual_seed(0)
    model, twin = nn.Linear(4, 3), nn.Linear(4, 3)
    twin.load_state_dict(model.state_dict())
    cfg = _cfg("AdamW", "full_model", clip_value=0.5)
    cfg.SOLVER.BASE_LR = 0.01
    optimizer = Trainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    by_hand = torch.optim.AdamW(twin.parameters(), lr=0.01, weight_decay=0.0)
    x = torch.randn(8, 4)
    for _ in range(3):
        for net, opt in ((model, optimizer), (twin, by_hand)):
            opt.zero_grad()
            (net(x) * 10).pow(2).sum().backward()
            if opt is by_hand:
                total = torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
                assert total > 0.5  # the clip really acts in this test
            opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)


def test_sgd_param_groups_are_detectron2s():
    cfg = _cfg("SGD", None)
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.MOMENTUM = 0.9
    cfg.SOLVER.NESTEROV = True
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ours, theirs = Trainer.build_optimizer(cfg, model), d2_build_optimizer(cfg, model)
    assert type(ours) is torch.optim.SGD
    strip = [{k: v for k, v in g.items() if k != "params"} for g in ours.param_groups]
    assert strip == [{k: v for k, v in g.items() if k != "params"} for g in theirs.param_groups]


@pytest.mark.parametrize(
    ("clip_type", "clip_value", "message"),
    [
        (
            "global",
            10.0,
            "SOLVER.CLIP_GRADIENTS.CLIP_TYPE: expected one of value, norm, full_model",
        ),
        ("full_model", 0.0, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE: must be > 0"),
    ],
)
def test_bad_clip_config_names_the_key(clip_type, clip_value, message):
    with pytest.raises(ValueError, match=message):
        Trainer.build_optimizer(_cfg("SGD", clip_type, clip_value), _Two())


def test_lazy_optimizer_full_model_clip_and_errors():
    model = _Two()
    clip = {"enabled": True, "clip_type": "full_model", "clip_value": 10.0}
    optimizer = optimizer_with_clipping(
        optimizer="SGD", params=model.parameters(), clip_gradients=clip, lr=1.0
    )
    a, b = _step(optimizer, model)
    torch.testing.assert_close(b, torch.tensor([8.0]))
    with pytest.raises(LazyConfigError, match=r"optimizer\.clip_gradients\.clip_type: expected"):
        optimizer_with_clipping(
            optimizer="SGD",
            params=_Two().parameters(),
            clip_gradients={**clip, "clip_type": "joint"},
            lr=1.0,
        )
