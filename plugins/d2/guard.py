"""Divergence guard for the Detectron2 trainer (``SOLVER.DIVERGENCE_GUARD``).

:class:`DivergenceGuardHook` watches every iteration's ``total_loss`` with
:class:`plugins.guard.LossMonitor` and raises :class:`plugins.guard.DivergenceError`
(iteration, loss, learning rate) before the periodic checkpointer can save; the trainer's
checkpointer refuses to write a checkpoint holding a non-finite tensor or a weight above
``MAX_WEIGHT`` (:func:`protect_checkpointer`), and writes nothing at all once training has
failed (Detectron2 saves ``model_final`` in ``after_train`` even when the last iteration
raised). Detectron2's own ``FloatingPointError`` for a non-finite loss becomes the same
:class:`~plugins.guard.DivergenceError` (:func:`divergence_as_error`), and the traceback that
Detectron2 logs for it is left out, so ``tools/train_net.py`` (a ``DefaultTrainer``) and
``tools/lazyconfig_train_net.py`` (a ``SimpleTrainer``: options and checkpointer given to
:func:`install_divergence_guard`) end with one line.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

import torch.distributed as dist
from detectron2.config import CfgNode
from detectron2.engine import HookBase, TrainerBase, hooks
from detectron2.utils import comm

from plugins.guard import DivergenceError, LossMonitor, find_bad_tensor, format_lr

__all__ = ["DivergenceGuardHook", "divergence_as_error", "install_divergence_guard"]

logger = logging.getLogger(__name__)

#: Checkpoint entries that hold weights: also checked against ``MAX_WEIGHT``.
_WEIGHT_ENTRIES = ("model", "ema")


class _DropDivergenceTraceback(logging.Filter):
    """Drop Detectron2's "Exception during training:" traceback for a divergence."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, (DivergenceError, FloatingPointError))


_TRACEBACK_FILTER = _DropDivergenceTraceback()


def _agree(problem: str | None) -> str | None:
    """The main process's verdict, on every process (only it sees the reduced loss)."""
    if comm.get_world_size() == 1 or not dist.is_initialized():
        return problem
    box = [problem]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class DivergenceGuardHook(HookBase):
    """Stop training when the loss diverges; keep bad weights out of checkpoints.

    Place it after ``LRScheduler`` (it reports the iteration's learning rate) and before
    ``PeriodicCheckpointer``.

    Args:
        monitor: the loss rule.
        max_weight: largest absolute weight a checkpoint may hold (0: finiteness only).
    """

    def __init__(self, monitor: LossMonitor, max_weight: float = 1e8) -> None:
        self.monitor = monitor
        self.max_weight = float(max_weight)
        #: set once training failed: no checkpoint is written after that
        self.stopped = False
        #: the checkpointer it protects (set by :func:`protect_checkpointer`)
        self.checkpointer = None

    def _lr(self) -> float | None:
        latest = self.trainer.storage.latest().get("lr")
        if latest is not None and latest[1] == self.trainer.iter:
            return float(latest[0])
        groups = self.trainer.optimizer.param_groups
        return float(groups[0]["lr"]) if groups else None

    def last_checkpoint_note(self) -> str:
        """``"; last checkpoint: PATH"``, ``"; no checkpoint was written"`` or ``""`` (no
        checkpointer)."""
        checkpointer = self.checkpointer
        if checkpointer is None:
            return ""
        if checkpointer.has_checkpoint():
            return f"; last checkpoint: {checkpointer.get_checkpoint_file()}"
        return "; no checkpoint was written"

    def after_step(self) -> None:
        problem, loss = None, None
        latest = self.trainer.storage.latest().get("total_loss")
        if latest is not None and latest[1] == self.trainer.iter:
            loss = float(latest[0])
            problem = self.monitor.problem(loss)
        if _agree(problem) is not None:
            self.stopped = True
            raise DivergenceError(
                f"training diverged at iteration {self.trainer.iter}: {problem} "
                f"({format_lr(self._lr())}){self.last_checkpoint_note()}",
                self.trainer.iter,
                loss,
                self._lr(),
            )

    def after_train(self) -> None:
        # Detectron2 sets iter = max_iter only when every iteration finished
        if self.trainer.iter < self.trainer.max_iter:
            self.stopped = True

    def state_dict(self) -> dict:
        """The loss window, saved with the trainer so a resumed run keeps its reference."""
        return {"monitor": self.monitor.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.monitor.load_state_dict(state.get("monitor", {}))

    def check_save(self, checkpointer, name: str) -> None:
        """Raise :class:`DivergenceError` if the checkpoint ``name`` would hold bad tensors."""
        content = {"model": checkpointer.model.state_dict()}
        content.update({k: obj.state_dict() for k, obj in checkpointer.checkpointables.items()})
        weights = {k: v for k, v in content.items() if k in _WEIGHT_ENTRIES}
        rest = {k: v for k, v in content.items() if k not in _WEIGHT_ENTRIES}
        problem = find_bad_tensor(weights, self.max_weight) or find_bad_tensor(rest)
        if problem is not None:
            self.stopped = True
            raise DivergenceError(
                f"training diverged by iteration {self.trainer.iter}: refusing to write "
                f"checkpoint {name}: {problem} ({format_lr(self._lr())})"
                f"{self.last_checkpoint_note()}",
                self.trainer.iter,
                None,
                self._lr(),
            )


def protect_checkpointer(checkpointer, guard: DivergenceGuardHook) -> None:
    """Route ``checkpointer.save`` through the guard: nothing is written once training has
    failed, and a checkpoint with bad tensors raises instead of being written."""
    save = checkpointer.save
    guard.checkpointer = checkpointer

    def guarded_save(name: str, **kwargs) -> None:
        if guard.stopped:
            logger.warning("not writing checkpoint %s: training did not finish", name)
            return
        guard.check_save(checkpointer, name)
        save(name, **kwargs)

    checkpointer.save = guarded_save


def install_divergence_guard(
    trainer: TrainerBase,
    hook_list: list[HookBase],
    options: CfgNode | None = None,
    checkpointer=None,
) -> DivergenceGuardHook | None:
    """Insert the guard of ``cfg.SOLVER.DIVERGENCE_GUARD`` into ``hook_list`` (before the
    periodic checkpointer, after the LR scheduler) and protect ``trainer.checkpointer``.

    Args:
        trainer: the trainer whose ``hook_list`` this is.
        hook_list: its hooks, changed in place.
        options: the ``SOLVER.DIVERGENCE_GUARD`` node (``ENABLED``, ``FACTOR``, ``WARMUP``,
            ``WINDOW``, ``MAX_WEIGHT``). Default ``trainer.cfg.SOLVER.DIVERGENCE_GUARD``
            (a ``DefaultTrainer``).
        checkpointer: the checkpointer to protect. Default ``trainer.checkpointer``.

    Returns:
        The hook, or ``None`` when ``ENABLED`` is off.
    """
    node = trainer.cfg.SOLVER.DIVERGENCE_GUARD if options is None else options
    if not node.ENABLED:
        return None
    guard = DivergenceGuardHook(LossMonitor(node.FACTOR, node.WARMUP, node.WINDOW), node.MAX_WEIGHT)
    before = (hooks.PeriodicCheckpointer, hooks.EvalHook, hooks.PeriodicWriter)
    at = next((i for i, h in enumerate(hook_list) if isinstance(h, before)), len(hook_list))
    hook_list.insert(at, guard)
    protect_checkpointer(trainer.checkpointer if checkpointer is None else checkpointer, guard)
    train_loop_logger = logging.getLogger("detectron2.engine.train_loop")
    if _TRACEBACK_FILTER not in train_loop_logger.filters:
        train_loop_logger.addFilter(_TRACEBACK_FILTER)
    return guard


@contextlib.contextmanager
def divergence_as_error(
    trainer: TrainerBase, guard: DivergenceGuardHook | None = None
) -> Iterator[None]:
    """Turn Detectron2's ``FloatingPointError`` ("Loss became infinite or NaN") raised inside
    the block into a :class:`DivergenceError` with the iteration and learning rate (and the
    last checkpoint of ``guard``, default ``trainer.guard``)."""
    try:
        yield
    except FloatingPointError as exc:
        lines = str(exc).strip().splitlines()
        losses = lines[-1].replace("loss_dict = ", "losses ") if len(lines) > 1 else str(exc)
        losses = re.sub(r"np\.float\d+\(([^)]*)\)", r"\1", losses)  # numpy 2 scalar reprs
        groups = trainer.optimizer.param_groups
        lr = float(groups[0]["lr"]) if groups else None
        guard = guard if guard is not None else getattr(trainer, "guard", None)
        note = guard.last_checkpoint_note() if guard is not None else ""
        raise DivergenceError(
            f"training diverged at iteration {trainer.iter}: the loss is not finite "
            f"({losses}; {format_lr(lr)}){note}",
            trainer.iter,
            float("nan"),
            lr,
        ) from exc
