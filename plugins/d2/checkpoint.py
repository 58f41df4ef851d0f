"""Safe, checked checkpoint loading for Detectron2, installed by ``import plugins.d2``.

Detectron2 reads weights through ``DetectionCheckpointer`` (``MODEL.WEIGHTS``, ``--resume``,
``DefaultPredictor``, ``--eval-only``): ``.pkl`` files with plain ``pickle.load`` and every
other file through fvcore's ``torch.load``. On import of :mod:`plugins.d2` this module

* routes fvcore's ``Checkpointer._load_file`` to :func:`plugins.safe_load.load_checkpoint_file`
  (``weights_only=True`` plus the allow-list, one-line refusal);
* gives ``detectron2.checkpoint.detection_checkpoint`` a ``pickle`` whose ``load`` is
  :class:`plugins.safe_load.RestrictedUnpickler`, so model-zoo ``.pkl`` files (numpy arrays)
  still load and nothing else unpickles;
* checks that the weights fit the model (:func:`plugins.convert.match.check_weights_match`):
  a file holding another model is a :class:`~plugins.convert.match.WrongCheckpointError`
  naming what it holds and the converter to use; a partial load logs one summary line.

All of Detectron2's own tools that use ``DetectionCheckpointer`` get the same behaviour.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

import fvcore.common.checkpoint as fvcore_checkpoint
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint import detection_checkpoint as d2_checkpoint_module

from plugins.convert.match import MatchReport, WrongCheckpointError, check_weights_match
from plugins.safe_load import (
    CheckpointRefusedError,
    RestrictedUnpickler,
    load_checkpoint_file,
)

__all__ = ["install", "WrongCheckpointError"]

logger = logging.getLogger(__name__)


class _RestrictedPickleModule:
    """Stands in for the ``pickle`` module inside Detectron2's checkpoint module: reading
    goes through :class:`RestrictedUnpickler`; everything else is the real module's."""

    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file: Any, *, encoding: str = "ASCII", **kwargs: Any) -> Any:
        name = getattr(file, "name", "the .pkl file")
        try:
            return RestrictedUnpickler(file, encoding=encoding).load()
        except CheckpointRefusedError as exc:
            raise CheckpointRefusedError(
                f"refused to load {name}: {exc} (a .pkl is read with an allow-list of numpy "
                "types only, because unpickling anything else can run code)"
            ) from None

    def __getattr__(self, name: str) -> Any:
        if name in ("loads", "Unpickler", "_Unpickler"):
            raise AttributeError(f"pickle.{name} is disabled in Detectron2's checkpoint module")
        return getattr(pickle, name)


def _safe_load_file(self, f: str) -> Any:
    """fvcore ``Checkpointer._load_file``: a weights-only load with the allow-list."""
    return load_checkpoint_file(f)


def _shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def _strip_module_prefix(keys_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """fvcore strips a ``module.`` prefix present on every key (DDP checkpoints)."""
    if keys_shapes and all(k.startswith("module.") for k in keys_shapes):
        return {k[len("module.") :]: v for k, v in keys_shapes.items()}
    return keys_shapes


_original_load_model = DetectionCheckpointer._load_model


def _checked_load_model(self, checkpoint: dict) -> Any:
    """``DetectionCheckpointer._load_model`` with the name-and-shape fit check.

    Plain checkpoints are checked before anything is loaded; files that need Detectron2's
    name heuristics (Caffe2 / model-zoo ``.pkl``) are checked from what it reports after.
    """
    path = getattr(self, "_plugins_path", "the checkpoint")
    model_shapes = _shapes(self.model.state_dict())
    file_state = checkpoint.get("model", {})
    file_shapes = _strip_module_prefix(_shapes(file_state))
    heuristics = bool(checkpoint.get("matching_heuristics", False))
    report = None
    if not heuristics:
        report = check_weights_match(model_shapes, file_shapes, path, "d2")
    incompatible = _original_load_model(self, checkpoint)
    if heuristics and incompatible is not None:
        wrong = tuple(k for k, *_ in incompatible.incorrect_shapes)
        missing = tuple(k for k in incompatible.missing_keys if k not in wrong)
        report = MatchReport(
            model_total=len(model_shapes),
            file_total=len(file_shapes),
            loaded=len(model_shapes) - len(set(missing) | set(wrong)),
            wrong_shape=wrong,
            missing=missing,
            unused=tuple(incompatible.unexpected_keys),
        )
        if report.is_wrong_model:
            raise WrongCheckpointError(
                f"{path} does not fit the model: after Detectron2's name matching only "
                f"{report.loaded} of the model's {report.model_total} tensors were filled "
                f"from its {report.file_total}."
            )
    if report is not None and not report.is_complete:
        logger.info("Partial load: %s", report.summary(path))
    return incompatible


_original_load = DetectionCheckpointer.load


def _load_remembering_path(self, path: str, *args: Any, **kwargs: Any) -> Any:
    """``DetectionCheckpointer.load`` that records the path for the messages above."""
    self._plugins_path = path
    return _original_load(self, path, *args, **kwargs)


def install() -> None:
    """Put the safe reader and the fit check in place (idempotent; run on import)."""
    fvcore_checkpoint.Checkpointer._load_file = _safe_load_file
    d2_checkpoint_module.pickle = _RestrictedPickleModule()
    DetectionCheckpointer._load_model = _checked_load_model
    DetectionCheckpointer.load = _load_remembering_path


install()
