"""The Detectron2 trainer of the plugins: ``Trainer(DefaultTrainer)``.

On top of :class:`~detectron2.engine.DefaultTrainer` (TensorBoard / JSON / console writers with
ETA, periodic checkpoints, ``AMPTrainer`` when ``SOLVER.AMP.ENABLED``, the
``WarmupCosineLR`` / ``WarmupMultiStepLR`` schedules):

- :meth:`Trainer.build_evaluator`: ``COCOEvaluator`` (bbox), with the fast evaluator only when
  Detectron2's C++ extension is built (:data:`plugins.d2.HAS_D2_C`);
- ``INPUT.SCALE_JITTER``: EfficientDet's random-rescale + fixed-size-crop training pipeline;
- ``SOLVER.OPTIMIZER``: SGD or AdamW;
- ``MODEL.EMA``: weight averaging (:mod:`plugins.d2.ema`), checkpointed under ``"ema"`` and
  used for every evaluation;
- early, readable errors: missing datasets (:func:`plugins.d2.datasets.check_datasets`),
  broken dataset contents (:func:`plugins.d2.data_check.check_dataset_contents`; the boxes it
  drops are dropped from the loaders and the evaluator's ground truth too),
  unreadable checkpoints (:class:`CheckpointLoadError`), AMP without CUDA;
- ``DATASETS.COCO_JSON``: the user's COCO-format datasets, registered when it is built;
- ``SOLVER.DIVERGENCE_GUARD``: a diverging run stops with :class:`plugins.guard.DivergenceError`
  and no checkpoint with bad weights is written (:mod:`plugins.d2.guard`);
- exact resume: the train loader starts at the resumed iteration, every iteration is reseeded,
  the optimizer is checkpointed (:mod:`plugins.d2.resume`);
- multi-process CPU training (gloo): the model's DDP wrapper gets no ``device_ids``.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.engine import DefaultTrainer, hooks
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import COCOEvaluator
from detectron2.solver.build import get_default_optimizer_params
from torch import nn

from plugins.convert.match import WrongCheckpointError
from plugins.core.variants import get_variant
from plugins.safe_load import CheckpointError

from ._compat import HAS_D2_C
from .augment import scale_jitter_augmentations
from .data_check import check_dataset_contents, drop_bad_ground_truth
from .datasets import check_datasets, prepare_dataset, register_config_datasets
from .ema import EMAHook, ModelEMA, unwrap_model
from .guard import DivergenceGuardHook, divergence_as_error, install_divergence_guard
from .optim import with_gradient_clipping
from .publish import is_published_ema, publish_trainer
from .resume import build_resumable_train_loader, install_exact_resume, restart_train_loader

__all__ = ["Trainer", "CheckpointLoadError", "build_train_augmentations", "load_checkpoint"]

logger = logging.getLogger(__name__)


class CheckpointLoadError(RuntimeError):
    """``MODEL.WEIGHTS`` (or the last checkpoint) could not be read as a checkpoint."""


def _load_or_raise(checkpointer: DetectionCheckpointer, path: str, **kwargs) -> dict:
    try:
        return checkpointer.load(path, **kwargs)
    except (CheckpointError, WrongCheckpointError) as e:  # refused, unreadable or another model
        raise CheckpointLoadError(str(e)) from e
    except Exception as e:  # anything else the framework raises for a bad file
        # first line only: torch's weights_only advice that follows is wrong for a corrupt file
        reason = (str(e).strip().splitlines() or [""])[0]
        if "Weights only load failed" in reason:
            reason = "torch.load could not unpickle it: the file is corrupt or not a checkpoint"
        raise CheckpointLoadError(
            f"cannot load checkpoint {path!r} (MODEL.WEIGHTS or OUTPUT_DIR/last_checkpoint): "
            f"not a readable checkpoint file ({type(e).__name__}: {reason})"
        ) from e


def load_checkpoint(cfg, model: nn.Module, path: str) -> bool:
    """Load weights for evaluation; with ``MODEL.EMA.ENABLED`` use the checkpoint's EMA weights.

    Args:
        cfg: the config.
        model: the model to fill.
        path: a checkpoint (``.pth`` of this trainer, or any file Detectron2's checkpointer reads).

    Returns:
        ``True`` if EMA weights were found and copied into ``model``.

    Raises:
        CheckpointLoadError: the file is missing or not a checkpoint.
    """
    checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    if not cfg.MODEL.EMA.ENABLED:
        _load_or_raise(checkpointer, path, checkpointables=[])
        return False
    ema = ModelEMA(model, cfg.MODEL.EMA.DECAY, cfg.MODEL.EMA.WARMUP)
    ema.num_updates = -1
    checkpointer.add_checkpointable("ema", ema)
    extra = _load_or_raise(checkpointer, path, checkpointables=["ema"])
    if ema.num_updates < 0:
        if is_published_ema(extra):  # a published file: "model" holds the EMA weights
            logger.info("Evaluating %s, whose weights are the EMA weights (published)", path)
            return True
        logger.warning("MODEL.EMA.ENABLED but %s has no EMA weights: using the raw weights", path)
        return False
    ema.copy_to(model)
    logger.info("Evaluating the EMA weights of %s (%d updates)", path, ema.num_updates)
    return True


def build_train_augmentations(cfg) -> list[T.Augmentation]:
    """Training augmentations: ``INPUT.SCALE_JITTER`` if enabled, else Detectron2's defaults.

    With scale jitter (:func:`plugins.d2.augment.scale_jitter_augmentations`): the flip
    (``INPUT.RANDOM_FLIP``), ``ResizeScale(MIN_SCALE, MAX_SCALE, S, S)``, then a random
    ``S x S`` crop with independent offsets that pads smaller images at the right and bottom,
    ``S = SIZE`` or the variant's image size.
    """
    node = cfg.INPUT.SCALE_JITTER
    if not node.ENABLED:
        return DatasetMapper(cfg, True).augmentations.augs
    size = node.SIZE or get_variant(cfg.MODEL.EFFICIENTDET.VARIANT).image_size
    return scale_jitter_augmentations(size, node.MIN_SCALE, node.MAX_SCALE, cfg.INPUT.RANDOM_FLIP)


@contextlib.contextmanager
def _ddp_without_device_ids_on_cpu():
    """While active, Detectron2's ``create_ddp_model`` leaves ``device_ids`` unset for a CPU model.

    ``DefaultTrainer.__init__`` wraps the model with ``create_ddp_model(model, ...)``, which
    passes ``device_ids=[local rank]``; torch's ``DistributedDataParallel`` refuses device ids
    for a CPU module, so multi-process CPU (gloo) training would stop there. The replacement
    lives in ``detectron2.engine.defaults`` only while our trainer is being built.
    """
    original = d2_defaults.create_ddp_model

    def create_ddp_model(model: nn.Module, **kwargs):
        param = next(model.parameters(), None)
        if param is not None and param.device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with COCO evaluation, scale jitter, AdamW, EMA and clear errors.

    Args:
        cfg: a frozen config with the plugins' keys.
    """

    def __init__(self, cfg) -> None:
        register_config_datasets(cfg)
        check_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST), cfg)
        check_dataset_contents(cfg)  # also makes Detectron2 drop the boxes it reports
        if cfg.SOLVER.AMP.ENABLED and not torch.cuda.is_available():
            raise ValueError(
                "SOLVER.AMP.ENABLED: mixed precision (detectron2's AMPTrainer) needs CUDA; "
                "set SOLVER.AMP.ENABLED False to train on CPU"
            )
        self.ema: ModelEMA | None = None
        self.guard: DivergenceGuardHook | None = None
        with _ddp_without_device_ids_on_cpu():
            super().__init__(cfg)

    # ---------------------------------------------------------------- building blocks
    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str | None = None):
        prepare_dataset(dataset_name)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        evaluator = COCOEvaluator(
            dataset_name, tasks=("bbox",), output_dir=output_folder, use_fast_impl=HAS_D2_C
        )
        return drop_bad_ground_truth(evaluator, dataset_name)

    @classmethod
    def build_train_loader(cls, cfg):
        mapper = DatasetMapper(cfg, is_train=True, augmentations=build_train_augmentations(cfg))
        return build_resumable_train_loader(cfg, mapper)

    @classmethod
    def build_optimizer(cls, cfg, model: nn.Module) -> torch.optim.Optimizer:
        """``SOLVER.OPTIMIZER`` (SGD or AdamW) with ``SOLVER.CLIP_GRADIENTS``.

        As Detectron2's ``build_optimizer`` (its parameter groups and SGD arguments), plus
        AdamW and the joint clip ``CLIP_TYPE: "full_model"`` (:mod:`plugins.d2.optim`).
        """
        name = cfg.SOLVER.OPTIMIZER
        if name not in ("SGD", "AdamW"):
            raise ValueError(f"SOLVER.OPTIMIZER: expected 'SGD' or 'AdamW', got {name!r}")
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        kwargs = {"lr": cfg.SOLVER.BASE_LR, "weight_decay": cfg.SOLVER.WEIGHT_DECAY}
        if name == "SGD":
            kwargs.update(momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV)
        optimizer_cls = getattr(torch.optim, name)
        return with_gradient_clipping(cfg.SOLVER.CLIP_GRADIENTS, optimizer_cls)(params, **kwargs)

    def build_hooks(self) -> list[hooks.HookBase]:
        ret = super().build_hooks()
        if self.cfg.MODEL.EMA.ENABLED:
            self.ema = ModelEMA(self.model, self.cfg.MODEL.EMA.DECAY, self.cfg.MODEL.EMA.WARMUP)
            self.checkpointer.add_checkpointable("ema", self.ema)
            # right after the timer: before the checkpointer and the evaluation
            ret.insert(1, EMAHook(self.ema, self.model))

        def evaluate():
            if self.guard is not None and self.guard.stopped:
                return {}  # training failed: Detectron2 still calls this in after_train
            self._last_eval_results = self.evaluate_current(self.cfg, self.model)
            return self._last_eval_results

        ret = [
            hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, evaluate)
            if isinstance(h, hooks.EvalHook)
            else h
            for h in ret
        ]
        install_exact_resume(self, ret)
        self.guard = install_divergence_guard(self, ret)
        return ret

    def train(self):
        """Detectron2's training loop; divergence raises :class:`plugins.guard.DivergenceError`."""
        with divergence_as_error(self):
            results = super().train()
        publish_trainer(self)  # the model-zoo file (PUBLISH.*, plugins.d2.publish)
        return results

    def evaluate_current(self, cfg, model: nn.Module):
        """Evaluate ``model`` (with the EMA weights swapped in when EMA is on)."""
        if self.ema is None:
            return self.test(cfg, model)
        with self.ema.swapped_into(unwrap_model(model)):
            return self.test(cfg, model)

    def resume_or_load(self, resume: bool = True) -> None:
        """Like Detectron2's, but a bad ``MODEL.WEIGHTS`` raises :class:`CheckpointLoadError`."""
        path = self.cfg.MODEL.WEIGHTS
        if resume and self.checkpointer.has_checkpoint():
            path = self.checkpointer.get_checkpoint_file()
            _load_or_raise(self.checkpointer, path)
            self.start_iter = self.iter + 1
            restart_train_loader(self)
            logger.info("Resumed from %s at iteration %d", path, self.start_iter)
        elif path:
            _load_or_raise(self.checkpointer, path, checkpointables=[])
            if self.ema is not None:  # start the average from the loaded weights
                self.ema = self._restart_ema()

    def _restart_ema(self) -> ModelEMA:
        fresh = ModelEMA(self.model, self.cfg.MODEL.EMA.DECAY, self.cfg.MODEL.EMA.WARMUP)
        self.ema.state = fresh.state
        self.ema.num_updates = 0
        return self.ema
