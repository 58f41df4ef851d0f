"""Exponential moving average (EMA) of model weights as a Detectron2 hook.

EfficientDet (https://arxiv.org/abs/1911.09070) evaluates an EMA of the weights with decay
0.9998. :class:`ModelEMA` keeps the averaged copy of every floating-point entry of the model's
``state_dict`` (parameters and BatchNorm statistics; integer buffers are copied), and is a
checkpointable (``state_dict`` / ``load_state_dict``): the trainer registers it with its
checkpointer under the key ``"ema"``, so checkpoints carry it and ``--resume`` continues it.
:class:`EMAHook` updates it after every iteration; :meth:`ModelEMA.swapped_into` evaluates with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from detectron2.engine import HookBase
from torch import Tensor, nn

__all__ = ["ModelEMA", "EMAHook", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (or ``model``)."""
    return (
        model.module
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))
        else model
    )


class ModelEMA:
    """Exponential moving average of a model's state.

    After update ``n`` (1-based), every floating-point entry ``e`` of the average becomes
    ``d * e + (1 - d) * w`` with ``d = min(decay, (1 + n) / (10 + n))`` when ``warmup`` is on
    (TensorFlow's ``ExponentialMovingAverage(num_updates=...)``), else ``d = decay``.

    Args:
        model: the model to average (a DDP wrapper is unwrapped).
        decay: decay per update, in ``[0, 1)``. Default 0.9998.
        warmup: use the ``num_updates`` warm-up. Default ``True``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay: expected a value in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.state: dict[str, Tensor] = {
            k: v.detach().clone() for k, v in unwrap_model(model).state_dict().items()
        }

    def current_decay(self) -> float:
        """The decay the next update will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates + 1
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the average."""
        d = self.current_decay()
        for key, value in unwrap_model(model).state_dict().items():
            avg = self.state[key]
            if avg.is_floating_point():
                avg.mul_(d).add_(value.detach().to(avg.dtype), alpha=1.0 - d)
            else:
                avg.copy_(value)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the weights of ``model`` with the average."""
        unwrap_model(model).load_state_dict(self.state)

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """Context manager: ``model`` holds the averaged weights inside, its own ones after."""
        inner = unwrap_model(model)
        backup = {k: v.detach().clone() for k, v in inner.state_dict().items()}
        self.copy_to(inner)
        try:
            yield model
        finally:
            with torch.no_grad():
                inner.load_state_dict(backup)

    def state_dict(self) -> dict:
        """Checkpoint content: the averaged tensors and the update count."""
        return {"decay": self.decay, "num_updates": self.num_updates, "state": self.state}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` (tensors are copied into place)."""
        missing = set(self.state) - set(state["state"])
        if missing:
            raise KeyError(f"state: EMA checkpoint lacks {sorted(missing)[:5]} ...")
        with torch.no_grad():
            for key, avg in self.state.items():
                avg.copy_(state["state"][key])
        self.num_updates = int(state["num_updates"])


class EMAHook(HookBase):
    """Update a :class:`ModelEMA` after every training iteration.

    Place it before the checkpointer hook so that a checkpoint of iteration ``i`` holds the
    average including iteration ``i``.

    Args:
        ema: the average to update.
        model: the trained model.
    """

    def __init__(self, ema: ModelEMA, model: nn.Module) -> None:
        self.ema = ema
        self.model = model

    def after_step(self) -> None:
        self.ema.update(self.model)
