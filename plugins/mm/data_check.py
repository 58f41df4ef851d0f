"""MMDetection side of the dataset check (:mod:`plugins.data.check`), run before training.

Registered names:

* ``PluginsCocoDataset`` (``DATASETS``): mmdet's ``CocoDataset`` that checks its annotation
  file and images when it loads them and drops the boxes the check reports (NaN / inf,
  zero or negative size, outside the image). ``PluginsShapesDataset`` derives from it.
* ``PluginsCocoMetric`` (``METRICS``): mmdet's ``CocoMetric`` whose ground truth (read from
  ``ann_file``) lacks those boxes too; a NaN ground-truth box would match every detection in
  pycocotools and inflate AP. ``PluginsShapesMetric`` derives from it.

:func:`prepare_datasets` is what ``tools/mm_train.py`` and ``tools/mm_test.py`` run before
building the runner: it checks every COCO-style dataset of the dataloaders (through dataset
wrappers), compares ``num_classes`` of the model's head with the dataset's classes, and
switches ``CocoDataset`` / ``CocoMetric`` to the checked types above so that the bad boxes
are really dropped from what mmdet trains and evaluates on.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Iterator

from mmdet.datasets import CocoDataset
from mmdet.evaluation import CocoMetric
from mmdet.registry import DATASETS, METRICS
from mmengine.logging import print_log

from plugins.data.check import (
    DatasetCheckError,
    DatasetReport,
    check_coco_dataset,
    check_num_classes,
)

__all__ = [
    "PluginsCocoDataset",
    "PluginsCocoMetric",
    "iter_dataset_configs",
    "prepare_datasets",
]

_LOGGED: set[str] = set()  # summary lines already printed by this process


def _log_summary(report: DatasetReport) -> None:
    summary = report.summary()
    if summary and summary not in _LOGGED:
        _LOGGED.add(summary)
        print_log(f"dataset check: {summary}", logger="current", level=logging.WARNING)


def _image_dir(dataset: CocoDataset) -> str:
    return dataset.data_prefix.get("img") or dataset.data_root or ""


@DATASETS.register_module()
class PluginsCocoDataset(CocoDataset):
    """mmdet ``CocoDataset`` that checks its files on load and drops the bad boxes.

    The check (:func:`plugins.data.check.check_coco_dataset`) runs on ``ann_file`` and the
    ``data_prefix["img"]`` folder before mmdet parses them; a problem raises
    :class:`~plugins.data.check.DatasetCheckError` (one line naming the file). In
    ``test_mode`` a file without ``annotations`` is accepted. Arguments as ``CocoDataset``.
    """

    def load_data_list(self) -> list[dict]:
        report = check_coco_dataset(
            self.ann_file, _image_dir(self), require_annotations=not self.test_mode
        )
        _log_summary(report)
        self._bad_annotation_ids = report.bad_annotation_ids
        return super().load_data_list()

    def parse_data_info(self, raw_data_info: dict) -> dict | list[dict]:
        bad = getattr(self, "_bad_annotation_ids", frozenset())
        if bad:
            anns = [a for a in raw_data_info["raw_ann_info"] if a["id"] not in bad]
            raw_data_info = {**raw_data_info, "raw_ann_info": anns}
        return super().parse_data_info(raw_data_info)


@METRICS.register_module()
class PluginsCocoMetric(CocoMetric):
    """mmdet ``CocoMetric`` whose ground truth from ``ann_file`` lacks the dropped boxes.

    Arguments as ``CocoMetric``. Without ``ann_file`` mmdet converts the ground truth from the
    dataset, which :class:`PluginsCocoDataset` has already cleaned.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        coco = self._coco_api
        if coco is None or "annotations" not in coco.dataset:
            return
        ann_file = kwargs.get("ann_file", args[0] if args else None)
        report = check_coco_dataset(ann_file, "", require_annotations=False, check_images=False)
        if report.bad_annotation_ids:
            anns = coco.dataset["annotations"]
            coco.dataset["annotations"] = [
                a for a in anns if a["id"] not in report.bad_annotation_ids
            ]
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                coco.createIndex()


def iter_dataset_configs(node, where: str) -> Iterator[tuple[str, dict]]:
    """Dataset configs inside a dataloader's ``dataset``, through wrappers.

    Args:
        node: a ``dataset`` config (``ConcatDataset`` etc. nest ``dataset`` / ``datasets``).
        where: its config key, e.g. ``"train_dataloader.dataset"``.

    Yields:
        ``(config key, dataset config)`` for ``node`` and every nested dataset.
    """
    if not isinstance(node, dict):
        return
    yield where, node
    if isinstance(node.get("dataset"), dict):
        yield from iter_dataset_configs(node["dataset"], f"{where}.dataset")
    for i, sub in enumerate(node.get("datasets") or []):
        yield from iter_dataset_configs(sub, f"{where}.datasets[{i}]")


def _registered(registry, type_name):
    if isinstance(type_name, type):
        return type_name
    return registry.get(type_name) if isinstance(type_name, str) else None


def _head_num_classes(model: dict) -> tuple[int | None, str]:
    """``(num_classes, its key)`` of the model's box head, or ``(None, "")``."""
    for key in ("bbox_head", "roi_head.bbox_head"):
        node = model
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get("num_classes"), int):
            return node["num_classes"], f"model.{key}.num_classes"
    return None, ""


def _check_dataset_config(ds: dict, where: str, model: dict, training: bool) -> None:
    cls = _registered(DATASETS, ds.get("type"))
    if not (isinstance(cls, type) and issubclass(cls, CocoDataset)):
        return  # not a COCO json dataset
    if cls.load_data_list not in (CocoDataset.load_data_list, PluginsCocoDataset.load_data_list):
        return  # reads its file its own way (LVIS, Objects365, ...): not ours to check
    if cls is CocoDataset:
        ds["type"] = "PluginsCocoDataset"  # mmdet's own class drops nothing it is told
    # Resolve the paths and classes as the dataset does, without loading anything.
    probe = copy.deepcopy(dict(ds))
    probe.update(pipeline=[], lazy_init=True)
    try:
        dataset = DATASETS.build(probe)
    except Exception:  # a config error: the runner raises it when it builds the dataset
        return
    training = training and not dataset.test_mode
    try:
        report = check_coco_dataset(
            dataset.ann_file, _image_dir(dataset), require_annotations=training
        )
        num_classes, key = _head_num_classes(model)
        if num_classes is not None:
            classes = dataset.metainfo.get("classes")
            names = list(classes) if classes is not None else None
            check_num_classes(report, num_classes, key, names, f"{where}.metainfo.classes")
    except DatasetCheckError as e:
        raise DatasetCheckError(f"{where}: {e}") from None
    _log_summary(report)


def prepare_datasets(cfg, loaders: tuple[str, ...], evaluators: tuple[str, ...]) -> None:
    """Check the COCO datasets of ``cfg`` and make mmdet drop the boxes the check reports.

    For every dataset (through wrappers) of the ``loaders`` whose type is ``CocoDataset`` or
    a subclass that reads the json as it does (not LVIS, Objects365, ...): :func:`plugins.data.check.check_coco_dataset` on its resolved ``ann_file`` and
    image folder (training loaders need at least one valid box unless ``test_mode``), and
    ``num_classes`` of ``model.bbox_head`` (or ``model.roi_head.bbox_head``) against the
    dataset's classes (``metainfo.classes``, which must be category names of the json).
    ``CocoDataset`` becomes :class:`PluginsCocoDataset` and ``CocoMetric`` in the
    ``evaluators`` becomes :class:`PluginsCocoMetric`, in place. Other ``CocoDataset``
    subclasses are checked, and keep mmdet's own filtering.

    Args:
        cfg: the mmengine config (changed in place).
        loaders: dataloader keys, e.g. ``("train_dataloader", "val_dataloader")``.
        evaluators: evaluator keys, e.g. ``("val_evaluator",)``.

    Raises:
        DatasetCheckError: one line naming the config key and the file.
    """
    model = cfg.get("model") or {}
    for loader in loaders:
        dl = cfg.get(loader)
        if not isinstance(dl, dict):
            continue
        for where, ds in iter_dataset_configs(dl.get("dataset"), f"{loader}.dataset"):
            _check_dataset_config(ds, where, model, training=loader == "train_dataloader")
    for key in evaluators:
        items = cfg.get(key)
        for ev in [items] if isinstance(items, dict) else list(items or []):
            if isinstance(ev, dict) and _registered(METRICS, ev.get("type")) is CocoMetric:
                ev["type"] = "PluginsCocoMetric"
