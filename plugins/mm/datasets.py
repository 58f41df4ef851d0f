"""The embedded Shapes dataset (:mod:`plugins.data.shapes`) for MMDetection.

Registered names:

* ``PluginsShapesDataset`` (``mmdet.registry.DATASETS``): mmdet's ``CocoDataset`` over one
  split of Shapes; generates the files on first use.
* ``PluginsShapesMetric`` (``mmdet.registry.METRICS``): mmdet's ``CocoMetric`` whose
  annotation file defaults to the generated split's COCO json.

Config use::

    train_dataloader = dict(dataset=dict(type="PluginsShapesDataset", split="train",
                                         pipeline=train_pipeline))
    val_evaluator = dict(type="PluginsShapesMetric", split="val", metric="bbox")

Both take ``data_root=None`` meaning the default root of
:func:`plugins.data.shapes.default_shapes_root` (``$PLUGINS_DATA_DIR/shapes_v1`` or
``~/.cache/dense_plugins/shapes_v1``).
"""

from __future__ import annotations

import os

from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS, METRICS

from plugins.core._validate import check_choice
from plugins.data.shapes import SHAPES_CLASSES, ShapesPaths, ensure_shapes_dataset
from plugins.mm.data_check import PluginsCocoDataset, PluginsCocoMetric

__all__ = [
    "SHAPES_METAINFO",
    "shapes_paths",
    "PluginsShapesDataset",
    "PluginsShapesMetric",
]

SHAPES_METAINFO: dict = dict(
    classes=SHAPES_CLASSES, palette=list(CocoDataset.METAINFO["palette"][: len(SHAPES_CLASSES)])
)
"""``metainfo`` for an mmdet ``CocoDataset`` over Shapes."""

_SPLITS = ("train", "val")


def shapes_paths(data_root: str | os.PathLike | None = None) -> ShapesPaths:
    """Generate Shapes under ``data_root`` if needed and return its paths.

    Args:
        data_root: dataset directory; ``None`` means the default root. Default ``None``.

    Returns:
        :class:`plugins.data.shapes.ShapesPaths` with absolute paths.
    """
    return ensure_shapes_dataset(data_root)


@DATASETS.register_module()
class PluginsShapesDataset(PluginsCocoDataset):
    """mmdet ``CocoDataset`` over one split of the embedded Shapes dataset (checked on load).

    Paper of the format: `Microsoft COCO <https://arxiv.org/abs/1405.0312>`_. The images and
    annotations are generated on first use (a few seconds), deterministically.

    Args:
        split: ``"train"`` or ``"val"``. Default ``"train"``.
        data_root: dataset directory; ``None`` for the default root. Default ``None``.
        **kwargs: forwarded to ``CocoDataset`` (``pipeline``, ``filter_cfg``,
            ``test_mode``, ``indices``, ...). ``ann_file``, ``data_prefix`` and ``metainfo``
            default to the split's files and the Shapes classes.

    Raises:
        ValueError: unknown ``split``.
    """

    METAINFO = SHAPES_METAINFO

    def __init__(
        self, split: str = "train", data_root: str | os.PathLike | None = None, **kwargs
    ) -> None:
        check_choice("split", split, _SPLITS)
        paths = shapes_paths(data_root)
        kwargs.setdefault("ann_file", f"annotations/{split}.json")
        kwargs.setdefault("data_prefix", dict(img=f"{split}/"))
        kwargs.setdefault("metainfo", SHAPES_METAINFO)
        self.split = split
        super().__init__(data_root=paths.root, **kwargs)


@METRICS.register_module()
class PluginsShapesMetric(PluginsCocoMetric):
    """mmdet ``CocoMetric`` on a split of the embedded Shapes dataset.

    Args:
        split: ``"train"`` or ``"val"``; picks the default ``ann_file``. Default ``"val"``.
        data_root: dataset directory; ``None`` for the default root. Default ``None``.
        ann_file: explicit COCO json; overrides ``split``/``data_root``. Default ``None``.
        **kwargs: forwarded to ``CocoMetric`` (``metric``, ``classwise``, ...).

    Raises:
        ValueError: unknown ``split``.
    """

    def __init__(
        self,
        split: str = "val",
        data_root: str | os.PathLike | None = None,
        ann_file: str | None = None,
        **kwargs,
    ) -> None:
        check_choice("split", split, _SPLITS)
        if ann_file is None:
            paths = shapes_paths(data_root)
            ann_file = paths.val_json if split == "val" else paths.train_json
        super().__init__(ann_file=ann_file, **kwargs)
