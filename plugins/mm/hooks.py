"""mmengine hooks: divergence guard and exact resume (registered in mmdet's ``HOOKS``).

Our configs list both in ``custom_hooks`` (so mmdet's own ``tools/train.py`` runs them too);
``tools/mm_train.py`` adds them to configs that do not::

    custom_hooks = [
        dict(type="PluginsDivergenceGuardHook"),  # factor=1000, warmup=20, window=100, max_weight=1e8
        dict(type="PluginsExactResumeHook"),
    ]

:class:`PluginsDivergenceGuardHook` stops a run whose loss is non-finite or explodes
(:class:`plugins.guard.LossMonitor`) with :class:`plugins.guard.DivergenceError` (iteration,
loss, learning rate), refuses to write a checkpoint with non-finite tensors or weights above
``max_weight``, and removes the checkpoint that ``max_keep_ckpts`` rotates out only after the
new one is written (mmengine deletes it first: a failed or killed save would leave none).

:class:`PluginsExactResumeHook` makes a resumed run (``--resume``, after a kill at any point)
end with the same weights as an uninterrupted one: it reseeds Python / numpy / torch from
``(seed, iteration)`` before every iteration's data is loaded (:mod:`plugins.resume`), so
whatever ran in between (validation, checkpointing, a restart) does not matter; mmengine itself
restores the epoch / iteration, the sampler's order (``DefaultSampler`` shuffles by seed and
epoch), the seed, optimizer, schedulers and EMA. Data-loader workers are seeded by mmengine
when they start; with ``persistent_workers=True`` they keep their random state across epochs,
which no checkpoint can restore, so such runs resume with different augmentations (a warning
says so; ``persistent_workers=False`` or ``num_workers=0`` resume exactly).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from mmdet.registry import HOOKS
from mmengine.dist import all_reduce, get_rank, get_world_size, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.runner import BaseLoop, IterBasedTrainLoop

from plugins.guard import DivergenceError, LossMonitor, find_bad_tensor, format_lr
from plugins.resume import STEP, derive_seed, seed_all

__all__ = ["PluginsDivergenceGuardHook", "PluginsExactResumeHook", "add_missing_hooks"]

#: Checkpoint entries that hold weights: also checked against ``max_weight``.
_WEIGHT_ENTRIES = ("state_dict", "ema_state_dict")


def _total_loss(outputs) -> torch.Tensor | None:
    """The total loss of a ``train_step`` output (mmengine's parsed ``log_vars``)."""
    if not isinstance(outputs, dict):
        return None
    if "loss" in outputs:
        value = outputs["loss"]
    else:
        parts = [v for k, v in outputs.items() if "loss" in k]
        if not parts:
            return None
        value = sum(torch.as_tensor(v, dtype=torch.float64).sum() for v in parts)
    return torch.as_tensor(value, dtype=torch.float64).detach().reshape(-1).sum().cpu()


def _current_lr(runner) -> float | None:
    try:
        lrs = runner.optim_wrapper.get_lr()
    except (AttributeError, KeyError, IndexError):
        return None
    first = next(iter(lrs.values()), None)
    return float(first[0]) if first else None


def _checkpoint_hooks(runner) -> Iterator[CheckpointHook]:
    return (h for h in runner.hooks if isinstance(h, CheckpointHook))


@HOOKS.register_module()
class PluginsDivergenceGuardHook(Hook):
    """Stop training on a diverging loss; never write or rotate in a bad checkpoint.

    Args:
        enabled: ``False`` turns the hook off (``tools/mm_train.py`` adds an enabled one to
            configs without it). Default ``True``.
        factor: a finite loss above ``factor`` x the median of the last ``window`` losses stops
            the run (0: only non-finite losses do). Default 1000.
        warmup: losses recorded before the ``factor`` rule applies. Default 20.
        window: number of recent losses whose median is the reference. Default 100.
        max_weight: a checkpoint whose weights (model or EMA) hold ``|x| > max_weight`` is
            refused (0: non-finite values only). Default 1e8.
    """

    # after LoggerHook (60: the diverging iteration is logged), before ParamSchedulerHook (70:
    # the lr is the iteration's) and CheckpointHook (90); after EMAHook's (49) checkpoint entry
    priority = 65

    def __init__(
        self,
        enabled: bool = True,
        factor: float = 1000.0,
        warmup: int = 20,
        window: int = 100,
        max_weight: float = 1e8,
    ) -> None:
        self.enabled = bool(enabled)
        self.monitor = LossMonitor(factor, warmup, window)
        self.max_weight = float(max_weight)
        self._deferred: list[str] = []
        self._last_iter = 0  # the last finished iteration (1-based, as mmengine logs it)
        self._last_lr: float | None = None  # and its learning rate

    # ------------------------------------------------------------------ loss
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self.enabled:
            return
        self._remove_deferred()
        self._last_iter, self._last_lr = runner.iter + 1, _current_lr(runner)
        loss = _total_loss(outputs)
        if loss is not None:
            if get_world_size() > 1:  # every process takes the same decision
                all_reduce(loss, op="mean")
            self.monitor.check(
                float(loss), self._last_iter, self._last_lr, self._last_ckpt_note(runner)
            )
        self._before_checkpoint(runner, by_epoch=False)

    def after_train_epoch(self, runner) -> None:
        if self.enabled:
            self._before_checkpoint(runner, by_epoch=True)

    def after_train(self, runner) -> None:
        self._remove_deferred()

    # ------------------------------------------------------------------ checkpoints
    @staticmethod
    def _last_ckpt_note(runner) -> str:
        last = runner.message_hub.get_info("last_ckpt")
        return f"; last checkpoint: {last}" if last else "; no checkpoint was written"

    def _refuse(self, runner, problem: str, what: str) -> None:
        raise DivergenceError(
            f"training diverged by iteration {self._last_iter}: refusing to write {what}: "
            f"{problem} ({format_lr(self._last_lr)}){self._last_ckpt_note(runner)}",
            self._last_iter,
            None,
            self._last_lr,
        )

    def _before_checkpoint(self, runner, by_epoch: bool) -> None:
        """Before a ``CheckpointHook`` of this stage saves: check the weights, and keep the
        checkpoint it would delete (``max_keep_ckpts``) until the new one is written."""
        for hook in _checkpoint_hooks(runner):
            if hook.by_epoch != by_epoch or not self._will_save(runner, hook):
                continue
            model = runner.model.module if hasattr(runner.model, "module") else runner.model
            weights = {"state_dict": model.state_dict()}
            for other in runner.hooks:  # EMAHook's averaged model
                if isinstance(getattr(other, "ema_model", None), torch.nn.Module):
                    weights["ema_state_dict"] = other.ema_model.state_dict()
            problem = find_bad_tensor(weights, self.max_weight)
            if problem is not None:
                self._refuse(runner, problem, "a checkpoint")
            self._defer_rotation(runner, hook)

    @staticmethod
    def _will_save(runner, hook: CheckpointHook) -> bool:
        if hook.by_epoch:
            return hook.every_n_epochs(runner, hook.interval, hook.save_begin) or (
                hook.save_last and hook.is_last_train_epoch(runner)
            )
        return hook.every_n_train_iters(runner, hook.interval, hook.save_begin) or (
            hook.save_last and hook.is_last_train_iter(runner)
        )

    def _defer_rotation(self, runner, hook: CheckpointHook) -> None:
        ids = getattr(hook, "keep_ckpt_ids", None)
        if hook.max_keep_ckpts <= 0 or ids is None or len(ids) < hook.max_keep_ckpts:
            return
        step = runner.epoch + 1 if hook.by_epoch else runner.iter + 1
        if ids[-1] == step:  # mmengine does not rotate for a second save of the same step
            return
        old = ids.popleft()
        if is_main_process():
            self._deferred.append(
                hook.file_backend.join_path(hook.out_dir, hook.filename_tmpl.format(old))
            )

    def _remove_deferred(self) -> None:
        while self._deferred:
            path = self._deferred.pop()
            if os.path.isfile(path):
                os.remove(path)  # a checkpoint mmengine wrote and rotates out

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if not self.enabled:
            return
        weights = {k: v for k, v in checkpoint.items() if k in _WEIGHT_ENTRIES}
        rest = {k: v for k, v in checkpoint.items() if k not in _WEIGHT_ENTRIES}
        problem = find_bad_tensor(weights, self.max_weight) or find_bad_tensor(rest)
        if problem is not None:
            self._refuse(runner, problem, "the checkpoint")
        checkpoint.setdefault("meta", {})["plugins_divergence_guard"] = self.monitor.state_dict()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = (checkpoint.get("meta") or {}).get("plugins_divergence_guard")
        if state and getattr(runner, "_resume", False):
            self.monitor.load_state_dict(state)


class _ReseedAfterSkip:
    """Iterator proxy for a resumed ``IterBasedTrainLoop``: mmengine loads and drops the first
    ``skip`` batches; right after the last of them, the generators are reseeded for the
    iteration that comes next."""

    def __init__(self, inner, skip: int, reseed) -> None:
        self.inner = inner
        self.skip = skip
        self.reseed = reseed

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.inner)
        if self.skip > 0:
            self.skip -= 1
            if self.skip == 0:
                self.reseed()
        return batch

    def __getattr__(self, name):
        return getattr(self.inner, name)


@HOOKS.register_module()
class PluginsExactResumeHook(Hook):
    """Reseed every iteration from ``(seed, iteration)`` so a resumed run ends bit-identical.

    The seed is the runner's (``randomness.seed``, or the random one mmengine draws and saves
    in the checkpoint); with ``randomness.diff_rank_seed`` each process adds its rank.
    """

    priority = "LOWEST"  # reseed after every other hook of the stage

    def _training(self, runner) -> bool:
        return isinstance(runner._train_loop, BaseLoop)

    def _reseed(self, runner, iteration: int) -> None:
        rank = get_rank() if runner._randomness_cfg.get("diff_rank_seed") else 0
        seed_all(derive_seed(runner.seed or 0, STEP, rank, iteration))

    def before_train(self, runner) -> None:
        loader = runner.train_dataloader
        if getattr(loader, "persistent_workers", False) and loader.num_workers > 0:
            runner.logger.warning(
                "PluginsExactResumeHook: train_dataloader.persistent_workers=True keeps the "
                "workers' random state across epochs, which a checkpoint cannot hold: a resumed "
                "run will augment differently. Set persistent_workers=False (or num_workers=0) "
                "for an exact resume."
            )

    def before_train_epoch(self, runner) -> None:
        self._reseed(runner, runner.iter)
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop) and loop.iter > 0:
            if not isinstance(loop.dataloader_iterator, _ReseedAfterSkip):
                iteration = loop.iter
                loop.dataloader_iterator = _ReseedAfterSkip(
                    loop.dataloader_iterator, iteration, lambda: self._reseed(runner, iteration)
                )

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._reseed(runner, runner.iter + 1)

    def after_val_epoch(self, runner, metrics=None) -> None:
        if self._training(runner):  # validation during training drew from the generators
            self._reseed(runner, runner.iter)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        loader = runner.train_dataloader
        checkpoint.setdefault("meta", {})["plugins_resume"] = {
            "seed": runner.seed,
            "world_size": get_world_size(),
            "batch_size": getattr(loader, "batch_size", None),
            "num_samples": len(loader.dataset) if hasattr(loader, "dataset") else None,
        }

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        saved = (checkpoint.get("meta") or {}).get("plugins_resume")
        if not saved or not getattr(runner, "_resume", False):
            return
        loader = runner.train_dataloader
        now = {
            "world_size": get_world_size(),
            "batch_size": getattr(loader, "batch_size", None),
            "num_samples": len(loader.dataset) if hasattr(loader, "dataset") else None,
        }
        changed = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
        if changed:
            runner.logger.warning(
                f"PluginsExactResumeHook: the data layout changed since the checkpoint "
                f"(saved, now): {changed}; the resumed run will not match an uninterrupted one"
            )


def add_missing_hooks(cfg) -> None:
    """Append ``PluginsDivergenceGuardHook`` and ``PluginsExactResumeHook`` to
    ``cfg.custom_hooks`` unless the config lists them (listed ones keep their arguments)."""
    hooks = list(cfg.get("custom_hooks") or [])
    listed = {h.get("type") for h in hooks if isinstance(h, dict)}
    for name in ("PluginsDivergenceGuardHook", "PluginsExactResumeHook"):
        if name not in listed and f"mmdet.{name}" not in listed:
            hooks.append(dict(type=name))
    cfg.custom_hooks = hooks
