"""Published (model-zoo style) MMDetection checkpoints.

``PluginsPublishHook`` (registered in mmdet's ``HOOKS``; our configs list it in
``custom_hooks``) publishes at the end of training, ``tools/publish_model.py`` publishes any
mmengine checkpoint of ours. The file ``<work_dir>/<name>-<sha256[:8]>.pth`` holds

- ``"state_dict"``: the weights that were evaluated. With mmengine's ``EMAHook`` these are the
  averaged ones: the hook swaps them into the model for validation, and its checkpoints keep
  them under ``state_dict`` (the trained weights go to ``ema_state_dict``, keys
  ``module.<name>``);
- ``"meta"``: mmengine's checkpoint metadata (``epoch``, ``iter``, ``cfg``, ``seed``,
  ``dataset_meta`` with the class names, ...) plus the final metrics, EMA facts, package
  versions and the date, as plain Python values.

No ``optimizer``, ``param_schedulers``, ``message_hub`` or ``ema_state_dict``: mmdet's
``init_detector`` / ``DetInferencer`` and ``tools/mm_test.py`` load the file as is, under
``weights_only=True``.
"""

from __future__ import annotations

import glob
import os
import os.path as osp
from collections.abc import Mapping
from typing import Any

import torch
from mmdet.registry import HOOKS
from mmengine.dist import is_main_process
from mmengine.hooks import EMAHook, Hook
from mmengine.model import is_model_wrapper

import plugins.publish as zoo

__all__ = [
    "PluginsPublishHook",
    "build_published",
    "evaluation_weights",
    "logged_metrics",
    "publish_checkpoint",
    "publish_runner",
]

_EMA_PREFIX = "module."  # mmengine's averaged-model wrapper names
_MM_MODULES = ["mmdet", "mmengine", "mmcv"]


def build_published(
    state_dict: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    *,
    metrics: Mapping[str, Any],
    ema: Mapping[str, Any],
    source: str = "end of training",
    metrics_source: str = "final validation",
) -> dict:
    """The content of a published mmengine checkpoint.

    Args:
        state_dict: the weights (moved to the CPU, detached).
        meta: mmengine's checkpoint metadata (``epoch``, ``iter``, ``cfg``, ``dataset_meta``,
            ...); kept, converted to plain values.
        metrics: evaluation results as mmengine logs them (``{"coco/bbox_mAP": ...}``).
        ema: ``{"applied": bool, ...}``: whether ``state_dict`` is an EMA.
        source: where the weights come from. Default ``"end of training"``.
        metrics_source: where the metrics come from. Default ``"final validation"``.

    Returns:
        ``{"state_dict": {name: tensor}, "meta": {...plain values...}}``.
    """
    meta = dict(meta)
    meta.update(
        publish_format=zoo.PUBLISH_FORMAT,
        framework="mmdetection",
        metrics=dict(metrics),
        metrics_source=metrics_source,
        ema=dict(ema),
        source=source,
        versions=zoo.package_versions(_MM_MODULES),
        date=zoo.utc_now(),
    )
    weights = {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}
    return {"state_dict": weights, zoo.META_KEY: zoo.to_plain(meta)}


def _ema_hook(runner) -> EMAHook | None:
    return next((h for h in runner.hooks if isinstance(h, EMAHook)), None)


def _runner_meta(runner) -> dict:
    """What ``Runner.save_checkpoint`` records under ``meta``, at the end of training."""
    import mmengine

    meta = {
        "epoch": runner.epoch,
        "iter": runner.iter,
        "cfg": runner.cfg.pretty_text,
        "seed": runner.seed,
        "experiment_name": runner.experiment_name,
        "mmengine_version": mmengine.__version__,
    }
    dataset = getattr(runner.train_dataloader, "dataset", None)
    if hasattr(dataset, "metainfo"):
        meta["dataset_meta"] = dataset.metainfo
    return meta


def publish_runner(
    runner, metrics: Mapping[str, Any] | None, out_dir: str | None = None, name: str | None = None
) -> str:
    """Publish the runner's model at the end of training.

    With an ``EMAHook`` the averaged model (``ema_model.module``, what validation used) is
    published, else the model itself.

    Args:
        runner: an mmengine ``Runner`` after training.
        metrics: the final validation metrics.
        out_dir: destination folder; ``None``: the work directory. Default ``None``.
        name: file name stem; ``None``: the config file's stem (``"model"`` without one).

    Returns:
        The published path.
    """
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    hook = _ema_hook(runner)
    if hook is not None:
        state = hook.ema_model.module.state_dict()
        ema = {"applied": True, "momentum": float(hook.ema_model.momentum)}
        ema["steps"] = int(hook.ema_model.steps)
    else:
        state, ema = model.state_dict(), {"applied": False}
    if name is None:
        filename = runner.cfg.filename
        name = osp.splitext(osp.basename(filename))[0] if filename else "model"
    published = build_published(state, _runner_meta(runner), metrics=metrics or {}, ema=ema)
    path = zoo.save_published(published, out_dir or runner.work_dir, name)
    runner.logger.info(f"Published {path} ({'EMA' if hook else 'trained'} weights)")
    return path


@HOOKS.register_module()
class PluginsPublishHook(Hook):
    """Write a model-zoo style checkpoint at the end of training (main process only).

    Keeps the metrics of the last validation and, after training, writes
    ``<out_dir>/<name>-<sha256[:8]>.pth`` (:func:`publish_runner`). Config::

        custom_hooks = [..., dict(type="PluginsPublishHook")]

    Args:
        name: file name stem; ``None``: the config file's stem. Default ``None``.
        out_dir: destination folder; ``None``: the work directory. Default ``None``.
    """

    priority = "VERY_LOW"

    def __init__(self, name: str | None = None, out_dir: str | None = None) -> None:
        self.name = name
        self.out_dir = out_dir
        self.metrics: dict = {}

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        self.metrics = dict(metrics or {})

    def after_train(self, runner) -> None:
        if is_main_process():
            publish_runner(runner, self.metrics, self.out_dir, self.name)


def evaluation_weights(checkpoint: Mapping[str, Any], use_ema: bool = True) -> tuple[dict, dict]:
    """The weights mmdet evaluation uses from an mmengine checkpoint, and EMA facts.

    Args:
        checkpoint: a loaded checkpoint with ``"state_dict"`` (and ``"ema_state_dict"`` when
            saved with ``EMAHook``, which leaves the average in ``state_dict``).
        use_ema: ``False`` picks the trained (not averaged) weights from ``ema_state_dict``.
            Default ``True``.

    Returns:
        ``(state_dict, ema)`` with ``ema = {"applied": bool, ...}``.

    Raises:
        PublishError: no ``state_dict`` entry.
    """
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint)
        raise zoo.PublishError(f"checkpoint: expected an mmengine 'state_dict' entry, got {keys}")
    meta = checkpoint.get(zoo.META_KEY) if isinstance(checkpoint.get(zoo.META_KEY), Mapping) else {}
    averaged = checkpoint.get("ema_state_dict")
    if isinstance(averaged, Mapping):
        steps = averaged.get("steps")
        facts = {"steps": int(steps)} if isinstance(steps, torch.Tensor) else {}
        if use_ema:
            return dict(checkpoint["state_dict"]), {"applied": True, **facts}
        raw = {k[len(_EMA_PREFIX) :]: v for k, v in averaged.items() if k.startswith(_EMA_PREFIX)}
        return raw, {"applied": False, **facts}
    ema = dict(meta.get("ema") or {"applied": False})
    return dict(checkpoint["state_dict"]), ema


def logged_metrics(checkpoint_path: str, meta: Mapping[str, Any]) -> tuple[dict, str]:
    """Validation metrics logged for this checkpoint's epoch (or iteration) in its work dir.

    Looks at ``<checkpoint dir>/<timestamp>/vis_data/scalars.json``, newest run first.

    Returns:
        ``(metrics, source)``; ``({}, "")`` when none is found.
    """
    folder = osp.dirname(osp.abspath(checkpoint_path))
    logs = sorted(glob.glob(osp.join(folder, "*", "vis_data", "scalars.json")), reverse=True)
    for key in ("epoch", "iter"):
        step = meta.get(key)
        if not isinstance(step, int):
            continue
        for log in logs:
            metrics = zoo.metrics_from_json_log(log, "step", step)
            if metrics:
                return metrics, f"{log}, {key} {step}"
    return {}, ""


def publish_checkpoint(
    checkpoint: Mapping[str, Any],
    checkpoint_path: str,
    *,
    model: torch.nn.Module,
    config: str,
    use_ema: bool,
    dataset_meta: Mapping[str, Any] | None,
    out_dir: str,
    name: str,
) -> str:
    """Publish a loaded mmengine checkpoint (``tools/publish_model.py``).

    Args:
        checkpoint: the loaded file.
        checkpoint_path: its path (metadata; logs are looked up beside it).
        model: the detector the config builds (meta device is fine): the weights must fit it.
        config: the config text (``Config.pretty_text``).
        use_ema: publish the EMA weights (``state_dict`` of an ``EMAHook`` checkpoint).
        dataset_meta: class names and palette, used when the checkpoint has none.
        out_dir: destination folder.
        name: file name stem.

    Returns:
        The published path.

    Raises:
        PublishError: no weights, or they do not fit the config's model.
    """
    state, ema = evaluation_weights(checkpoint, use_ema)
    zoo.check_state_dict_matches(state, model.state_dict(), f"{checkpoint_path} with this config")
    meta = dict(checkpoint.get(zoo.META_KEY) or {})
    meta["cfg"] = config
    if "dataset_meta" not in meta and dataset_meta:
        meta["dataset_meta"] = dict(dataset_meta)
    metrics, source = dict(meta.pop("metrics", None) or {}), meta.pop("metrics_source", "")
    if not metrics:
        metrics, source = logged_metrics(checkpoint_path, meta)
    published = build_published(
        state,
        meta,
        metrics=metrics,
        ema=ema,
        source=os.path.basename(checkpoint_path),
        metrics_source=source or "none found",
    )
    return zoo.save_published(published, out_dir, name)
