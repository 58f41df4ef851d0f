"""Detectron2 side of the dataset check (:mod:`plugins.data.check`), run before training.

:func:`check_dataset_contents` checks every dataset of ``DATASETS.TRAIN`` / ``DATASETS.TEST``
whose metadata names a ``json_file`` and an ``image_root`` (the embedded Shapes datasets,
generated first; Detectron2's builtin COCO; datasets registered with
``register_coco_instances`` or ``DATASETS.COCO_JSON``), compares the model's class count
with the dataset's categories, logs one summary line per dataset with dropped boxes, and
makes the catalog entry drop those boxes from what Detectron2 loads (training, test loaders,
``convert_to_coco_json``). :func:`drop_bad_ground_truth` does the same for the ground truth
that ``COCOEvaluator`` reads from the json. ``tools/train_net.py`` and
:class:`plugins.d2.engine.Trainer` call them; tools without ``cfg.DATASETS`` (LazyConfig)
call :func:`check_named_datasets` with the dataset names and the class count found by
:func:`lazy_num_classes`.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterable

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from plugins.data.check import (
    BOX_KINDS,
    DatasetCheckError,
    DatasetReport,
    check_coco_dataset,
    check_num_classes,
    classify_boxes,
)

from .datasets import num_classes_key, prepare_dataset

__all__ = [
    "check_dataset_contents",
    "check_named_datasets",
    "drop_bad_boxes",
    "drop_bad_ground_truth",
    "lazy_num_classes",
]

logger = logging.getLogger(__name__)

#: Meta-architectures whose class count lives in :func:`plugins.d2.datasets.num_classes_key`.
_KNOWN_ARCHS = ("EfficientDet", "RetinaNetPlus", "RetinaNet", "CornerNet", "GeneralizedRCNN")

#: Where a LazyConfig keeps the model's class count, first found wins: RetinaNet, CornerNet
#: (``configs/lazy/``), EfficientDet's core network, Detectron2's own R-CNN LazyConfigs.
LAZY_NUM_CLASSES_KEYS = (
    "model.num_classes",
    "model.network.num_classes",
    "model.roi_heads.num_classes",
)

_REPORTS: dict[str, DatasetReport] = {}  # dataset name -> latest report
_LOGGED: set[tuple[str, str]] = set()  # (name, summary) already logged
_WRAPPED: dict[str, Callable] = {}  # dataset name -> our catalog function


def _cfg_value(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def lazy_num_classes(cfg) -> tuple[int | None, str]:
    """A LazyConfig's class count and its key (the first of :data:`LAZY_NUM_CLASSES_KEYS`
    holding an int), or ``(None, "")`` when the model has none of them (no class check)."""
    for key in LAZY_NUM_CLASSES_KEYS:
        try:
            value = _cfg_value(cfg, key)
        except (KeyError, AttributeError, TypeError):  # omegaconf raises KeyError subclasses
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            return value, key
    return None, ""


def check_dataset_contents(cfg) -> dict[str, DatasetReport]:
    """Check the COCO datasets of ``cfg`` and make Detectron2 drop the bad boxes they report.

    :func:`check_named_datasets` on ``DATASETS.TRAIN`` / ``DATASETS.TEST`` with the class
    count key of the meta-architecture (``MODEL.EFFICIENTDET.NUM_CLASSES``,
    ``MODEL.RETINANET.NUM_CLASSES``, ``MODEL.CORNERNET.NUM_CLASSES``,
    ``MODEL.ROI_HEADS.NUM_CLASSES``; other architectures: no class check).

    Args:
        cfg: the config (datasets already registered).

    Returns:
        Dataset name -> :class:`~plugins.data.check.DatasetReport` for every checked dataset.

    Raises:
        plugins.data.check.DatasetCheckError: see :func:`check_named_datasets`.
    """
    key = num_classes_key(cfg) if cfg.MODEL.META_ARCHITECTURE in _KNOWN_ARCHS else None
    return check_named_datasets(
        cfg.DATASETS.TRAIN,
        cfg.DATASETS.TEST,
        int(_cfg_value(cfg, key)) if key else None,
        key or "",
    )


def check_named_datasets(
    train: Iterable[str], test: Iterable[str], num_classes: int | None = None, key: str = ""
) -> dict[str, DatasetReport]:
    """Check registered datasets by name; the bad boxes are then dropped when they load.

    A dataset is checked when its metadata has ``json_file``, ``image_root`` and
    ``evaluator_type == "coco"`` (what ``register_coco_instances`` and Detectron2's builtin
    COCO set; the embedded Shapes datasets are generated first). Training datasets must hold
    at least one valid box; test datasets may lack ``annotations`` (inference only). Results
    are cached while the files are unchanged, so calling this again (each process, the
    trainer) costs little and logs nothing new.

    Args:
        train: training dataset names.
        test: test dataset names.
        num_classes: the model's class count, compared with the categories; ``None`` skips
            the comparison. Default ``None``.
        key: the config key of ``num_classes``, named in the error. Default ``""``.

    Returns:
        Dataset name -> :class:`~plugins.data.check.DatasetReport` for every checked dataset.

    Raises:
        plugins.data.check.DatasetCheckError: a problem, in one line naming the dataset and
            the file.
    """
    reports: dict[str, DatasetReport] = {}
    for names, training in ((train, True), (test, False)):
        for name in names:
            prepare_dataset(name)  # generates an embedded dataset on first use
            meta = MetadataCatalog.get(name)
            json_file, image_root = meta.get("json_file"), meta.get("image_root")
            if not json_file or not image_root or meta.get("evaluator_type") != "coco":
                continue  # not a COCO detection json (LVIS, panoptic, ...): not ours to check
            try:
                report = check_coco_dataset(json_file, image_root, require_annotations=training)
                if num_classes is not None:
                    check_num_classes(report, num_classes, key or "num_classes")
            except DatasetCheckError as e:
                raise DatasetCheckError(f"dataset {name!r}: {e}") from None
            summary = report.summary()
            if summary and (name, summary) not in _LOGGED:
                _LOGGED.add((name, summary))
                logger.warning("dataset %r: %s", name, summary)
            _REPORTS[name] = reports[name] = report
            if report.dropped:
                _drop_on_load(name)
    return reports


def drop_bad_boxes(records: list[dict]) -> tuple[list[dict], int]:
    """Remove the annotations that :func:`plugins.data.check.classify_boxes` drops.

    Args:
        records: Detectron2 dataset dicts (``width``, ``height``, ``annotations`` with
            ``bbox`` and ``bbox_mode``). Records without a size are kept as they are.

    Returns:
        The records (new dicts where annotations were removed) and the number removed.
    """
    boxes, sizes, where = [], [], []
    for i, record in enumerate(records):
        if "width" not in record or "height" not in record:
            continue
        for j, ann in enumerate(record.get("annotations", ())):
            mode = ann.get("bbox_mode", BoxMode.XYWH_ABS)
            box = ann["bbox"]
            if mode != BoxMode.XYWH_ABS:
                box = BoxMode.convert(list(box), mode, BoxMode.XYWH_ABS)
            boxes.append(box)
            sizes.append((record["width"], record["height"]))
            where.append((i, j))
    if not boxes:
        return records, 0
    codes = classify_boxes(np.array(boxes, dtype=np.float64), np.array(sizes, dtype=np.float64))
    bad: dict[int, set[int]] = {}
    for (i, j), code in zip(where, codes.tolist()):
        if code in BOX_KINDS:
            bad.setdefault(i, set()).add(j)
    out = list(records)
    for i, drop in bad.items():
        anns = records[i]["annotations"]
        out[i] = {**records[i], "annotations": [a for j, a in enumerate(anns) if j not in drop]}
    return out, sum(len(d) for d in bad.values())


def _drop_on_load(name: str) -> None:
    """Wrap the catalog function of ``name`` so that what it returns has no bad boxes."""
    load: Callable[[], list[dict]] = DatasetCatalog[name]
    if load is _WRAPPED.get(name):
        return

    def load_checked() -> list[dict]:
        records, removed = drop_bad_boxes(load())
        logger.info("dataset %r: dropped %d boxes found by the dataset check", name, removed)
        return records

    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, load_checked)
    _WRAPPED[name] = load_checked


def drop_bad_ground_truth(evaluator, dataset_name: str):
    """Remove the dropped boxes from a ``COCOEvaluator``'s ground truth.

    ``COCOEvaluator`` reads the ground truth straight from the metadata's ``json_file``; a
    NaN box there would match every detection in pycocotools and inflate AP. Uses the report
    of :func:`check_dataset_contents` for ``dataset_name`` (nothing happens without one).

    Args:
        evaluator: a ``COCOEvaluator`` (or any evaluator; others are returned unchanged).
        dataset_name: its dataset.

    Returns:
        ``evaluator``.
    """
    report = _REPORTS.get(dataset_name)
    coco = getattr(evaluator, "_coco_api", None)  # Detectron2 0.6 keeps the COCO object here
    if report is None or not report.bad_annotation_ids or coco is None:
        return evaluator
    anns = coco.dataset.get("annotations", [])
    coco.dataset["annotations"] = [a for a in anns if a["id"] not in report.bad_annotation_ids]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        coco.createIndex()
    return evaluator
