"""Published (model-zoo style) Detectron2 checkpoints.

``Trainer.train`` (:mod:`plugins.d2.engine`) and ``tools/lazyconfig_train_net.py`` publish at the
end of training, ``tools/publish_model.py`` publishes any Detectron2 checkpoint of ours. The
file ``<OUTPUT_DIR>/<PUBLISH.NAME>-<sha256[:8]>.pth`` holds

- ``"model"``: the weights that were evaluated: the EMA weights (``ckpt["ema"]["state"]``,
  :mod:`plugins.d2.ema`) when ``MODEL.EMA.ENABLED``, else the trained ones; every entry of the
  model's ``state_dict``, on the CPU;
- ``"meta"``: plain Python values only (see :func:`build_published`): the config text, the
  final evaluation results, the iteration, EMA facts, the class names, package versions and
  the date.

No ``"trainer"`` / ``"optimizer"`` / ``"scheduler"`` / ``"iteration"`` entries: the file loads
as is with ``DetectionCheckpointer``, ``DefaultPredictor`` and ``MODEL.WEIGHTS`` (fine-tuning
then starts at iteration 0), under ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from detectron2.config import CfgNode as CN
from detectron2.utils import comm
from torch import nn

from plugins.publish import (
    META_KEY,
    PUBLISH_FORMAT,
    PublishError,
    check_state_dict_matches,
    metrics_from_json_log,
    package_versions,
    save_published,
    to_plain,
    utc_now,
)

from .ema import ModelEMA, unwrap_model

__all__ = [
    "add_publish_config",
    "build_published",
    "default_stem",
    "evaluation_weights",
    "is_published_ema",
    "publish_checkpoint",
    "publish_state",
    "publish_trainer",
]

# a child of Detectron2's logger: shown wherever Detectron2 set up its logging (train_net.py)
logger = logging.getLogger("detectron2.plugins.publish")

_HASH_SUFFIX = re.compile(r"-[0-9a-f]{8}$")


def add_publish_config(cfg: CN) -> None:
    """Add the ``PUBLISH`` node (end-of-training model-zoo file), in place; idempotent."""
    if "PUBLISH" in cfg:
        return
    cfg.PUBLISH = node = CN()
    # At the end of training, write OUTPUT_DIR/<NAME>-<sha256[:8]>.pth: the evaluated weights
    # (EMA when MODEL.EMA.ENABLED) under "model" and metadata under "meta", nothing else.
    node.ENABLED = True
    # File name before the hash.
    node.NAME = "model_final"


def build_published(
    state_dict: Mapping[str, torch.Tensor],
    *,
    config: str,
    architecture: str,
    iteration: int | None,
    metrics: Mapping[str, Any],
    ema: Mapping[str, Any],
    classes: list[str] | None = None,
    datasets: dict | None = None,
    source: str = "end of training",
    metrics_source: str = "final evaluation",
) -> dict:
    """The content of a published Detectron2 checkpoint.

    Args:
        state_dict: the weights (moved to the CPU, detached).
        config: the config text (YAML dump or LazyConfig source).
        architecture: the meta-architecture's class name.
        iteration: last trained iteration (0-based, as Detectron2 checkpoints), or ``None``.
        metrics: evaluation results (``{"bbox": {"AP": ...}}``, as Detectron2 returns them).
        ema: ``{"applied": bool, ...}``: whether ``state_dict`` is an EMA, its decay/updates.
        classes: class names in label order, when known. Default ``None``.
        datasets: ``{"train": [...], "test": [...]}`` dataset names. Default ``None``.
        source: where the weights come from. Default ``"end of training"``.
        metrics_source: where the metrics come from. Default ``"final evaluation"``.

    Returns:
        ``{"model": {name: tensor}, "meta": {...plain values...}}``.
    """
    meta = {
        "publish_format": PUBLISH_FORMAT,
        "framework": "detectron2",
        "architecture": architecture,
        "config": config,
        "iteration": iteration,
        "metrics": metrics,
        "metrics_source": metrics_source,
        "ema": dict(ema),
        "classes": classes,
        "datasets": datasets,
        "source": source,
        "versions": package_versions(["detectron2", "fvcore"]),
        "date": utc_now(),
    }
    weights = {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}
    return {"model": weights, META_KEY: to_plain(meta)}


def is_published_ema(extra: Mapping[str, Any] | None) -> bool:
    """Whether a checkpoint's remaining entries (after ``"model"``) say the weights are an EMA.

    ``DetectionCheckpointer.load`` returns the entries it did not consume; a published file
    has ``meta["ema"]["applied"]``.
    """
    meta = (extra or {}).get(META_KEY)
    return isinstance(meta, Mapping) and bool((meta.get("ema") or {}).get("applied"))


def evaluation_weights(checkpoint: Mapping[str, Any], use_ema: bool) -> tuple[dict, dict]:
    """The weights Detectron2 evaluation uses from a checkpoint of ours, and EMA facts.

    Args:
        checkpoint: a loaded checkpoint with ``"model"`` (and ``"ema"`` when trained with EMA).
        use_ema: ``MODEL.EMA.ENABLED`` (``train.ema.enabled`` for LazyConfigs).

    Returns:
        ``(state_dict, ema)``: the EMA state when ``use_ema`` and the checkpoint has one, else
        ``"model"``; ``ema`` is ``{"applied": bool, "decay": ..., "num_updates": ...}``.

    Raises:
        PublishError: no ``"model"`` entry, or it holds something else than tensors.
    """
    if not isinstance(checkpoint, Mapping) or "model" not in checkpoint:
        keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint)
        raise PublishError(f"checkpoint: expected a Detectron2 'model' entry, got {keys}")
    meta = checkpoint.get(META_KEY)
    already = is_published_ema(checkpoint)
    entry = checkpoint.get("ema")
    if use_ema and isinstance(entry, Mapping) and isinstance(entry.get("state"), Mapping):
        state = entry["state"]
        ema = {
            "applied": True,
            "decay": float(entry.get("decay", float("nan"))),
            "num_updates": int(entry.get("num_updates", -1)),
        }
    else:
        state = checkpoint["model"]
        ema = dict(meta["ema"]) if already else {"applied": False}
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            try:  # Detectron2 .pkl files hold numpy arrays
                value = torch.as_tensor(value)
            except (TypeError, ValueError, RuntimeError):
                raise PublishError(
                    f"checkpoint['model'][{key!r}]: expected a tensor, got {type(value).__name__}"
                ) from None
        out[key] = value
    return out, ema


def _classes(dataset_names) -> list[str] | None:
    from detectron2.data import MetadataCatalog

    for name in dataset_names:
        if name in MetadataCatalog.list():
            classes = MetadataCatalog.get(name).get("thing_classes")
            if classes:
                return list(classes)
    return None


def _ema_facts(ema: ModelEMA | None) -> dict:
    if ema is None:
        return {"applied": False}
    return {"applied": True, "decay": ema.decay, "num_updates": ema.num_updates}


def publish_state(
    model: nn.Module,
    ema: ModelEMA | None,
    *,
    out_dir: str,
    name: str,
    config: str,
    iteration: int,
    metrics: Mapping[str, Any] | None,
    train_datasets: list[str],
    test_datasets: list[str],
) -> str:
    """Publish a model at the end of training (the EMA weights when ``ema`` is given).

    Returns:
        The path of the published file.
    """
    state = ema.state if ema is not None else unwrap_model(model).state_dict()
    checkpoint = build_published(
        state,
        config=config,
        architecture=type(unwrap_model(model)).__name__,
        iteration=iteration,
        metrics=metrics or {},
        ema=_ema_facts(ema),
        classes=_classes(list(train_datasets) + list(test_datasets)),
        datasets={"train": list(train_datasets), "test": list(test_datasets)},
    )
    path = save_published(checkpoint, out_dir, name)
    logger.info(
        "Published %s (%s weights, iteration %d)",
        path,
        "EMA" if ema is not None else "trained",
        iteration,
    )
    return path


def publish_trainer(trainer) -> str | None:
    """End-of-training publish for :class:`plugins.d2.engine.Trainer` (``PUBLISH.ENABLED``).

    Publishes on the main process, when the run reached ``SOLVER.MAX_ITER``; the metrics are
    those of the final evaluation (``trainer._last_eval_results``), ``{}`` when there was none.

    Returns:
        The published path, or ``None`` when disabled or not finished.
    """
    cfg = trainer.cfg
    # after a complete run Detectron2 leaves trainer.iter at max_iter
    if not (cfg.PUBLISH.ENABLED and comm.is_main_process()) or trainer.iter < trainer.max_iter:
        return None
    return publish_state(
        trainer.model,
        trainer.ema,
        out_dir=cfg.OUTPUT_DIR,
        name=cfg.PUBLISH.NAME,
        config=cfg.dump(),
        iteration=trainer.max_iter - 1,  # as the last checkpoint's "iteration"
        metrics=getattr(trainer, "_last_eval_results", None),
        train_datasets=list(cfg.DATASETS.TRAIN),
        test_datasets=list(cfg.DATASETS.TEST),
    )


def default_stem(checkpoint_path: str) -> str:
    """The checkpoint's file name without extension and without a hash suffix."""
    stem = os.path.splitext(os.path.basename(checkpoint_path))[0]
    return _HASH_SUFFIX.sub("", stem)


def publish_checkpoint(
    checkpoint: Mapping[str, Any],
    checkpoint_path: str,
    *,
    model: nn.Module,
    config: str,
    use_ema: bool,
    train_datasets: list[str],
    test_datasets: list[str],
    out_dir: str,
    name: str,
) -> str:
    """Publish a loaded Detectron2 checkpoint of ours (``tools/publish_model.py``).

    Args:
        checkpoint: the loaded file (``"model"``, optional ``"ema"``, ``"iteration"``).
        checkpoint_path: its path (metadata; ``metrics.json`` is looked up beside it).
        model: the model the config builds (meta device is fine): the weights must fit it.
        config: the config text.
        use_ema: publish the EMA weights when the checkpoint has them.
        train_datasets, test_datasets: dataset names (for class names and metadata).
        out_dir: destination folder.
        name: file name stem.

    Returns:
        The published path.

    Raises:
        PublishError: no model weights, or they do not fit the config's model.
    """
    state, ema = evaluation_weights(checkpoint, use_ema)
    check_state_dict_matches(
        state, unwrap_model(model).state_dict(), f"{checkpoint_path} with this config"
    )
    iteration = checkpoint.get("iteration")
    meta = checkpoint.get(META_KEY) if isinstance(checkpoint.get(META_KEY), Mapping) else {}
    if iteration is None:
        iteration = meta.get("iteration")
    metrics, metrics_source = dict(meta.get("metrics") or {}), meta.get("metrics_source", "")
    log = os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), "metrics.json")
    # a periodic evaluation is logged at the checkpoint's iteration, the final one (after the
    # last iteration, max_iter - 1) at max_iter
    for step in () if metrics or iteration is None else (int(iteration), int(iteration) + 1):
        metrics = metrics_from_json_log(log, "iteration", step, nested=True)
        if metrics:
            metrics_source = f"{log}, iteration {step}"
            break
    published = build_published(
        state,
        config=config,
        architecture=type(unwrap_model(model)).__name__,
        iteration=None if iteration is None else int(iteration),
        metrics=metrics,
        ema=ema,
        classes=_classes(list(train_datasets) + list(test_datasets)),
        datasets={"train": list(train_datasets), "test": list(test_datasets)},
        source=os.path.basename(checkpoint_path),
        metrics_source=metrics_source or "none found",
    )
    return save_published(published, out_dir, name)
