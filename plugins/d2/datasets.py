"""Datasets for the Detectron2 adapters.

- ``shapes_train`` / ``shapes_val``: the embedded synthetic COCO-format dataset
  (:mod:`plugins.data.shapes`), registered on import and generated on first use (about 10 s,
  under ``$PLUGINS_DATA_DIR`` or ``~/.cache/dense_plugins``).
- COCO (``coco_2017_train``, ``coco_2017_val``, ...) stays registered by Detectron2 itself
  (under ``$DETECTRON2_DATASETS``, default ``./datasets``); :func:`check_datasets` turns a
  missing file into a :class:`DatasetMissingError` that names the expected path and how to run
  on the embedded dataset instead. The trainer calls it when it is built.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from plugins.data.shapes import SHAPES_CATEGORIES, ensure_shapes_dataset

__all__ = [
    "SHAPES_DATASETS",
    "DatasetMissingError",
    "register_shapes",
    "prepare_dataset",
    "check_datasets",
]

#: Registered name -> split of the embedded dataset.
SHAPES_DATASETS: dict[str, str] = {"shapes_train": "train", "shapes_val": "val"}

_EMBEDDED_HINT = (
    "To run on the embedded synthetic dataset instead, add "
    "DATASETS.TRAIN \"('shapes_train',)\" DATASETS.TEST \"('shapes_val',)\" "
    "MODEL.EFFICIENTDET.NUM_CLASSES 6 (MODEL.RETINANET.NUM_CLASSES 6 for RetinaNet) to the "
    "command line, or use configs/demo/*.yaml."
)


class DatasetMissingError(FileNotFoundError):
    """A dataset named in the config is not registered or its files are missing."""


def _split_paths(split: str) -> tuple[str, str]:
    paths = ensure_shapes_dataset()
    if split == "train":
        return paths.train_json, paths.train_images
    return paths.val_json, paths.val_images


def _load_shapes(name: str, split: str) -> list[dict]:
    json_file, image_root = _split_paths(split)
    meta = MetadataCatalog.get(name)
    if meta.get("json_file") not in (None, json_file):
        # PLUGINS_DATA_DIR changed within this process: start the metadata afresh.
        MetadataCatalog.remove(name)
        _set_static_metadata(name)
        meta = MetadataCatalog.get(name)
    if meta.get("json_file") is None:
        meta.set(json_file=json_file, image_root=image_root)
    return load_coco_json(json_file, image_root, name)


def _set_static_metadata(name: str) -> None:
    MetadataCatalog.get(name).set(
        thing_classes=[c["name"] for c in SHAPES_CATEGORIES], evaluator_type="coco"
    )


def register_shapes() -> None:
    """Register ``shapes_train`` and ``shapes_val`` (lazily; nothing is generated here).

    The data is generated on the first ``DatasetCatalog.get``, which also records its
    ``json_file`` and ``image_root`` in the metadata (used by ``COCOEvaluator``).
    """
    for name, split in SHAPES_DATASETS.items():
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda name=name, split=split: _load_shapes(name, split))
        _set_static_metadata(name)


def prepare_dataset(name: str) -> None:
    """Make sure the metadata of an embedded dataset points at its generated files."""
    if name in SHAPES_DATASETS and MetadataCatalog.get(name).get("json_file") is None:
        json_file, image_root = _split_paths(SHAPES_DATASETS[name])
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root)


def check_datasets(names: Iterable[str]) -> None:
    """Fail early, with a helpful message, if a dataset cannot be loaded.

    Args:
        names: dataset names, e.g. ``cfg.DATASETS.TRAIN + cfg.DATASETS.TEST``.

    Raises:
        DatasetMissingError: a name is not registered, or its ``json_file`` / ``image_root``
            (e.g. Detectron2's COCO under ``$DETECTRON2_DATASETS``) does not exist.
    """
    registered = set(DatasetCatalog.list())
    for name in names:
        if name not in registered:
            raise DatasetMissingError(
                f"Dataset {name!r} is not registered (DATASETS.TRAIN / DATASETS.TEST). "
                f"Embedded datasets: {sorted(SHAPES_DATASETS)}; Detectron2 registers COCO as "
                f"e.g. 'coco_2017_train'. {_EMBEDDED_HINT}"
            )
        if name in SHAPES_DATASETS:
            continue  # generated on first use
        meta = MetadataCatalog.get(name)
        for key in ("json_file", "image_root"):
            path = meta.get(key)
            if path and not os.path.exists(path):
                root = os.environ.get("DETECTRON2_DATASETS", "datasets")
                raise DatasetMissingError(
                    f"Dataset {name!r}: {key} {path!r} does not exist. Detectron2 looks for "
                    f"builtin datasets under $DETECTRON2_DATASETS (now {root!r}); see "
                    "https://detectron2.readthedocs.io/en/latest/tutorials/builtin_datasets.html "
                    f"for the expected layout. {_EMBEDDED_HINT}"
                )


register_shapes()
