"""``_BASE_`` paths into Detectron2's installed model-zoo configs.

Detectron2 resolves a relative ``_BASE_`` against the directory of the YAML file and leaves only
paths starting with ``/``, ``http://`` or ``https://`` alone, so a config of this repository can
not name a file inside the installed ``detectron2`` package by a relative path. On import,
:mod:`plugins.d2` registers a path handler with Detectron2's ``PathManager`` (which is what
``CfgNode.merge_from_file`` opens files with) for the prefix :data:`MODEL_ZOO_PREFIX`::

    _BASE_: "/detectron2-model-zoo/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"

reads ``detectron2/model_zoo/configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml`` of the
installed Detectron2, and that file's own relative ``_BASE_`` (``../Base-RCNN-FPN.yaml``)
resolves inside the same folder. Every Detectron2 tool reads such configs once ``plugins.d2`` is
imported; a name that the model zoo lacks fails with the file it looked for.
"""

from __future__ import annotations

import os
from typing import IO, Any

import detectron2
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler

__all__ = ["MODEL_ZOO_PREFIX", "model_zoo_config_path"]

#: Prefix of ``_BASE_`` paths that name a config of Detectron2's model zoo.
MODEL_ZOO_PREFIX = "/detectron2-model-zoo/"


def model_zoo_config_path(path: str) -> str:
    """The file that a :data:`MODEL_ZOO_PREFIX` path names in the installed Detectron2.

    Raises:
        FileNotFoundError: no such config in the installed model zoo (the message names it).
    """
    # the files detectron2.model_zoo.get_config_file reads, found without importing that
    # module (it needs pkg_resources, which setuptools >= 81 no longer ships)
    root = os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs")
    rel = os.path.normpath(path[len(MODEL_ZOO_PREFIX) :])
    local = os.path.join(root, rel)
    if rel.startswith("..") or not os.path.isfile(local):
        raise FileNotFoundError(f"{path}: no config {rel!r} in Detectron2's model zoo ({root})")
    return local


class _ModelZooConfigHandler(PathHandler):
    """iopath handler: :data:`MODEL_ZOO_PREFIX` paths -> files of the installed model zoo."""

    def _get_supported_prefixes(self) -> list[str]:
        return [MODEL_ZOO_PREFIX]

    def _get_local_path(self, path: str, **kwargs: Any) -> str:
        return model_zoo_config_path(path)

    def _isfile(self, path: str, **kwargs: Any) -> bool:
        try:
            model_zoo_config_path(path)
        except FileNotFoundError:
            return False
        return True

    def _exists(self, path: str, **kwargs: Any) -> bool:
        return self._isfile(path)

    def _open(self, path: str, mode: str = "r", buffering: int = -1, **kwargs: Any) -> IO:
        if "w" in mode or "a" in mode or "+" in mode:
            raise ValueError(f"{path}: the model zoo is read-only")
        return open(model_zoo_config_path(path), mode, buffering=buffering)


if MODEL_ZOO_PREFIX not in PathManager._path_handlers:  # import twice: register once
    PathManager.register_handler(_ModelZooConfigHandler())
