"""Safe, checked checkpoint loading for MMDetection / mmengine, installed by ``import plugins.mm``.

mmengine reads checkpoints through ``CheckpointLoader`` (``load_from``, ``--resume``, mmdet's
``init_detector`` / ``DetInferencer`` / ``tools/test.py``). On import of :mod:`plugins.mm` (our
configs import it through ``custom_imports``, so mmdet's own tools do too) this module

* registers on the allow-list of :mod:`plugins.safe_load` the one non-plain type mmengine
  checkpoints hold: ``mmengine.logging.HistoryBuffer`` (the message hub's logged scalars;
  numpy arrays inside are already allowed), so torch's ``weights_only=True`` reads them;
* replaces mmengine's local and HTTP(S) checkpoint readers (also used by ``open-mmlab://``,
  ``torchvision://`` and ``mmcls://`` paths) by :func:`plugins.safe_load.load_checkpoint_file`:
  ``weights_only=True`` passed explicitly, a one-line refusal for anything else;
* checks that the weights fit the model (:func:`plugins.convert.match.check_weights_match`)
  before they are copied in: a file holding another model is a
  :class:`~plugins.convert.match.WrongCheckpointError` naming what it holds and the converter
  to use; a partial load prints one summary line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import torch
from mmengine.dist import get_dist_info
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import checkpoint as mm_checkpoint
from mmengine.runner import runner as mm_runner

from plugins.convert.match import WrongCheckpointError, check_weights_match
from plugins.safe_load import load_checkpoint_file, register_installed_framework_types

__all__ = ["install", "load_from_local", "load_from_http", "WrongCheckpointError"]

_last_path: list[str] = ["the checkpoint"]  # the file being loaded, for messages


def load_from_local(filename: str, map_location: Any = None) -> Any:
    """mmengine's local reader, weights-only with the allow-list."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    _last_path[0] = filename
    return load_checkpoint_file(filename, map_location=map_location)


def load_from_http(
    filename: str, map_location: Any = None, model_dir: str | None = None, progress: bool = False
) -> Any:
    """mmengine's HTTP(S) reader: download once into torch's hub cache, then read it safely.

    In a distributed run rank 0 downloads first and the others wait, as mmengine does.
    """
    model_dir = model_dir or os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(model_dir, os.path.basename(filename.split("?")[0]))
    rank, world_size = get_dist_info()
    if rank == 0 and not os.path.isfile(cached):
        os.makedirs(model_dir, exist_ok=True)
        torch.hub.download_url_to_file(filename, cached, progress=progress)
    if world_size > 1:
        torch.distributed.barrier()
    return load_from_local(cached, map_location)


def _shapes(state: dict, revise_keys: list) -> dict[str, tuple[int, ...]]:
    out = {}
    for key, value in state.items():
        for pattern, replacement in revise_keys:
            key = re.sub(pattern, replacement, key)
        if hasattr(value, "shape"):
            out[key] = tuple(value.shape)
    return out


_original_to_model: Callable = mm_checkpoint._load_checkpoint_to_model


def _checked_load_checkpoint_to_model(
    model: torch.nn.Module,
    checkpoint: dict,
    strict: bool = False,
    logger: Any = None,
    revise_keys: list = [(r"^module\.", "")],  # noqa: B006  (mmengine's own default)
) -> dict:
    """mmengine's ``_load_checkpoint_to_model`` with the fit check before copying."""
    inner = model.module if is_model_wrapper(model) else model
    model_shapes = {k: tuple(v.shape) for k, v in inner.state_dict().items()}
    # what mmengine loads: ``state_dict``, else the dict itself
    loaded = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint
    file_shapes = _shapes(loaded, revise_keys)
    held = checkpoint.get("model") if "state_dict" not in checkpoint else None  # Detectron2's
    held_shapes = _shapes(held, revise_keys) if isinstance(held, dict) else None
    report = check_weights_match(model_shapes, file_shapes, _last_path[0], "mm", held_shapes)
    if not report.is_complete:
        print_log(f"Partial load: {report.summary(_last_path[0])}", logger="current")
    return _original_to_model(model, checkpoint, strict, logger, revise_keys)


def install() -> None:
    """Register the allow-list, the safe readers and the fit check (idempotent)."""
    register_installed_framework_types()  # mmengine's HistoryBuffer
    loader = mm_checkpoint.CheckpointLoader
    loader.register_scheme(prefixes="", loader=load_from_local, force=True)
    loader.register_scheme(prefixes=("http://", "https://"), loader=load_from_http, force=True)
    # open-mmlab://, torchvision:// and mmcls:// call these module functions by name
    mm_checkpoint.load_from_local = load_from_local
    mm_checkpoint.load_from_http = load_from_http
    mm_checkpoint._load_checkpoint_to_model = _checked_load_checkpoint_to_model
    mm_runner._load_checkpoint_to_model = _checked_load_checkpoint_to_model


install()
