"""Divergence guard: stop a training run whose loss or weights blow up (framework-free).

Both trainers (:mod:`plugins.d2.guard`, :mod:`plugins.mm.hooks`) feed every iteration's total
loss to a :class:`LossMonitor` and check the state they are about to save with
:func:`find_bad_tensor`. A run stops with :class:`DivergenceError` (iteration, loss, learning
rate) when

* the loss is NaN or infinite (from the first iteration on), or
* after ``warmup`` finite losses, the loss is more than ``factor`` times the median of the last
  ``window`` finite losses (a loss of 1e9 after losses near 1 is a divergence even though it
  is finite), or
* a checkpoint is about to be written with a non-finite tensor, or with a weight whose absolute
  value exceeds ``max_weight`` (weights of 1e16 with a still-finite loss).

This module imports only torch and numpy.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping

import numpy as np
import torch

__all__ = ["DivergenceError", "LossMonitor", "find_bad_tensor", "format_lr"]


class DivergenceError(RuntimeError):
    """Training diverged; the message names the iteration, the loss and the learning rate.

    Attributes:
        iteration: the iteration (as the framework's log counts it) where it was found.
        loss: the offending loss value (``None`` when the weights were the problem).
        lr: the learning rate of that iteration (``None`` when unknown).
    """

    def __init__(
        self, message: str, iteration: int, loss: float | None = None, lr: float | None = None
    ) -> None:
        super().__init__(message)
        self.iteration = iteration
        self.loss = loss
        self.lr = lr


def format_lr(lr: float | None) -> str:
    """``"lr 0.005"`` or ``"lr unknown"``."""
    return "lr unknown" if lr is None else f"lr {lr:.6g}"


class LossMonitor:
    """The loss rule of the divergence guard.

    Args:
        factor: a finite loss above ``factor`` x the running median is a divergence; ``0``
            turns this rule off (non-finite losses still stop the run). Default 1000.
        warmup: number of finite losses seen before the ratio rule applies. Default 20.
        window: number of recent finite losses whose median is the reference. Default 100.
    """

    def __init__(self, factor: float = 1000.0, warmup: int = 20, window: int = 100) -> None:
        if not (isinstance(factor, (int, float)) and factor >= 0):
            raise ValueError(f"factor: expected a number >= 0, got {factor!r}")
        if not (isinstance(warmup, int) and warmup >= 0):
            raise ValueError(f"warmup: expected an int >= 0, got {warmup!r}")
        if not (isinstance(window, int) and window >= 1):
            raise ValueError(f"window: expected an int >= 1, got {window!r}")
        self.factor = float(factor)
        self.warmup = warmup
        self.recent: deque[float] = deque(maxlen=window)
        self.seen = 0

    def problem(self, loss: float) -> str | None:
        """Why ``loss`` is a divergence, or ``None``; a healthy loss joins the window."""
        if not math.isfinite(loss):
            return f"loss {loss} is not finite"
        if self.factor > 0 and self.seen >= self.warmup and self.recent:
            median = statistics.median(self.recent)
            if median != 0 and abs(loss) > self.factor * abs(median):
                return (
                    f"loss {loss:.6g} is more than {self.factor:g}x the median {median:.6g} "
                    f"of the last {len(self.recent)} losses"
                )
        self.recent.append(float(loss))
        self.seen += 1
        return None

    def check(self, loss: float, iteration: int, lr: float | None, where: str = "") -> None:
        """Raise :class:`DivergenceError` when :meth:`problem` finds one.

        Args:
            loss: the iteration's total loss.
            iteration: the iteration number to report.
            lr: the learning rate to report.
            where: appended to the message (e.g. which checkpoint is the last good one).
        """
        reason = self.problem(loss)
        if reason is not None:
            raise DivergenceError(
                f"training diverged at iteration {iteration}: {reason} ({format_lr(lr)}){where}",
                iteration,
                loss,
                lr,
            )

    def state_dict(self) -> dict:
        """Plain-Python state for a checkpoint: the window of recent losses and the count."""
        return {"recent": list(self.recent), "seen": self.seen}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict` (a resumed run keeps its reference losses)."""
        self.recent.clear()
        self.recent.extend(float(v) for v in state.get("recent", []))
        self.seen = int(state.get("seen", len(self.recent)))


def _tensors(tree, path: str) -> Iterable[tuple[str, torch.Tensor | np.ndarray]]:
    if isinstance(tree, (torch.Tensor, np.ndarray)):
        yield path, tree
    elif isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _tensors(value, f"{path}.{key}" if path else str(key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _tensors(value, f"{path}[{i}]")


def find_bad_tensor(tree, max_abs: float | None = None, path: str = "") -> str | None:
    """The first floating-point tensor in ``tree`` that is non-finite or too large.

    Args:
        tree: a tensor, a numpy array, or nested dicts / lists / tuples of them (a state dict,
            a whole checkpoint); other leaves are ignored.
        max_abs: also report a tensor holding a value with ``|x| > max_abs``; ``None`` or ``0``
            checks finiteness only.
        path: the name of ``tree`` in the message.

    Returns:
        ``None`` when every floating-point tensor is fine, else ``"<path>: 3 non-finite
        values"`` or ``"<path>: |value| up to 1.2e+17 > 1e+08"``.
    """
    for name, value in _tensors(tree, path):
        t = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
        if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
            continue
        finite = torch.isfinite(t.detach())
        if not bool(finite.all()):
            return f"{name}: {int((~finite).sum())} non-finite values"
        if max_abs:
            peak = float(t.detach().abs().max())
            if peak > max_abs:
                return f"{name}: |value| up to {peak:.3g} > {max_abs:g}"
    return None
