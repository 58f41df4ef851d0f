"""Datasets for the Detectron2 adapters.

- ``shapes_train`` / ``shapes_val``: the embedded synthetic COCO-format dataset
  (:mod:`plugins.data.shapes`), registered on import and generated on first use (about 10 s,
  under ``$PLUGINS_DATA_DIR`` or ``~/.cache/dense_plugins``).
- COCO (``coco_2017_train``, ``coco_2017_val``, ...) stays registered by Detectron2 itself
  (under ``$DETECTRON2_DATASETS``, default ``./datasets``); :func:`check_datasets` turns a
  missing file into a :class:`DatasetMissingError` that names the expected path and how to run
  on the embedded dataset instead. The trainer calls it when it is built.
- your own COCO-format datasets, named in the config key ``DATASETS.COCO_JSON`` as
  ``(name, json_file, image_root)`` triples (or ``tools/train_net.py --coco-dataset``):
  :func:`register_config_datasets` registers them with Detectron2's
  ``register_coco_instances`` (metadata ``json_file``, ``image_root``, ``evaluator_type``
  ``"coco"``), so ``DATASETS.TRAIN`` / ``DATASETS.TEST`` can name them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances

from plugins.data.shapes import SHAPES_CATEGORIES, ensure_shapes_dataset

__all__ = [
    "SHAPES_DATASETS",
    "DatasetMissingError",
    "register_shapes",
    "prepare_dataset",
    "check_datasets",
    "add_coco_dataset_argument",
    "register_coco_json_datasets",
    "register_config_datasets",
    "COCO_JSON_KEY",
    "dataset_hint",
    "num_classes_key",
]

#: Registered name -> split of the embedded dataset.
SHAPES_DATASETS: dict[str, str] = {"shapes_train": "train", "shapes_val": "val"}

#: The config key of the user's COCO-format datasets (see :func:`register_config_datasets`).
COCO_JSON_KEY = "DATASETS.COCO_JSON"

#: ``MODEL.META_ARCHITECTURE`` -> (config key of its class count, its CPU demo config).
_ARCH_KEYS: dict[str, tuple[str, str]] = {
    "EfficientDet": ("MODEL.EFFICIENTDET.NUM_CLASSES", "configs/demo/efficientdet_shapes.yaml"),
    "RetinaNetPlus": ("MODEL.RETINANET.NUM_CLASSES", "configs/demo/retinanet_shapes.yaml"),
    "RetinaNet": ("MODEL.RETINANET.NUM_CLASSES", "configs/demo/retinanet_shapes.yaml"),
    "CornerNet": ("MODEL.CORNERNET.NUM_CLASSES", "configs/demo/cornernet_shapes.yaml"),
}


def num_classes_key(cfg) -> str:
    """The config key holding the class count of ``cfg``'s meta-architecture.

    ``MODEL.EFFICIENTDET.NUM_CLASSES``, ``MODEL.RETINANET.NUM_CLASSES`` (``RetinaNet``,
    ``RetinaNetPlus``), ``MODEL.CORNERNET.NUM_CLASSES``; Detectron2's R-CNNs and anything
    else: ``MODEL.ROI_HEADS.NUM_CLASSES``.
    """
    arch = cfg.MODEL.META_ARCHITECTURE
    return _ARCH_KEYS.get(arch, ("MODEL.ROI_HEADS.NUM_CLASSES", ""))[0]


def dataset_hint(cfg=None) -> str:
    """How to run without the missing data: commands that work for ``cfg``'s architecture.

    The embedded Shapes dataset through the architecture's CPU demo config (the paper configs
    are sized for GPUs), and the user's own COCO files through ``--coco-dataset``.
    """
    arch = cfg.MODEL.META_ARCHITECTURE if cfg is not None else ""
    demo = _ARCH_KEYS.get(arch, ("", "configs/demo/efficientdet_shapes.yaml (or *_shapes.yaml)"))[1]
    key = num_classes_key(cfg) if cfg is not None else "MODEL.<HEAD>.NUM_CLASSES"
    return (
        "To train on the embedded synthetic dataset (shapes_train / shapes_val, generated on "
        f"first use) instead, run: python tools/train_net.py --config-file {demo} . To use your "
        "own COCO-format files, add: --coco-dataset my_train TRAIN.json TRAIN_IMAGES/ "
        "--coco-dataset my_val VAL.json VAL_IMAGES/ DATASETS.TRAIN \"('my_train',)\" "
        f"DATASETS.TEST \"('my_val',)\" {key} <number of categories>."
    )


def lazy_dataset_hint(config_file: str, num_classes_key: str = "") -> str:
    """:func:`dataset_hint` for ``tools/lazyconfig_train_net.py`` and a LazyConfig file.

    Args:
        config_file: the LazyConfig's path (its name picks the family's demo config).
        num_classes_key: the config's class-count key (e.g. ``model.network.num_classes``).
    """
    name = os.path.basename(config_file).lower()
    family = next((f for f in ("cornernet", "retinanet") if f in name), "efficientdet")
    key = num_classes_key or "model.<...>.num_classes"
    return (
        "To train on the embedded synthetic dataset (shapes_train / shapes_val, generated on "
        "first use) instead, run: python tools/lazyconfig_train_net.py --config-file "
        f"configs/lazy/demo/{family}_shapes.py . To use your own COCO-format files, add: "
        "--coco-dataset my_train TRAIN.json TRAIN_IMAGES/ --coco-dataset my_val VAL.json "
        "VAL_IMAGES/ dataloader.train.dataset.names=my_train "
        f"dataloader.test.dataset.names=my_val {key}=<number of categories>."
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


def add_coco_dataset_argument(parser, usage: str) -> None:
    """Add the tools' ``--coco-dataset NAME JSON IMAGE_ROOT`` option (repeatable) to ``parser``.

    Args:
        parser: an ``argparse`` parser (Detectron2's ``default_argument_parser()``).
        usage: how the tool's config then names the dataset, for the help text.
    """
    parser.add_argument(
        "--coco-dataset",
        nargs=3,
        action="append",
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format dataset NAME (annotation file JSON, images under "
        f"IMAGE_ROOT), then {usage}; repeatable",
    )


def register_coco_json_datasets(entries: Iterable, key: str = COCO_JSON_KEY) -> list[str]:
    """Register COCO-format datasets given as ``(name, json_file, image_root)`` triples.

    Each becomes a Detectron2 dataset through ``register_coco_instances`` with absolute paths
    (relative ones are taken from the working directory), so its metadata has ``json_file``,
    ``image_root`` and ``evaluator_type="coco"`` (``COCOEvaluator`` and the dataset checks read
    them); ``thing_classes`` come from the json's categories when it is loaded. Nothing is read
    here: missing files are reported by :func:`check_datasets`. Registering the same triple
    again is a no-op, so every process of a distributed run may call this.

    Args:
        entries: the triples, e.g. ``cfg.DATASETS.COCO_JSON``.
        key: the config key named in error messages. Default ``"DATASETS.COCO_JSON"``.

    Returns:
        The dataset names, in order.

    Raises:
        ValueError: an entry is not three non-empty strings, a name is given twice, or a name
            is already registered otherwise (e.g. a Detectron2 builtin such as
            ``coco_2017_train``, or the embedded ``shapes_train``).
    """
    names: list[str] = []
    for i, entry in enumerate(entries):
        if (
            not isinstance(entry, (list, tuple))
            or len(entry) != 3
            or not all(isinstance(v, str) and v for v in entry)
        ):
            raise ValueError(
                f"{key}[{i}]: expected (name, json_file, image_root), three non-empty "
                f"strings, got {entry!r}"
            )
        name, json_file, image_root = entry
        if name in names:
            raise ValueError(f"{key}[{i}]: dataset name {name!r} is given twice")
        names.append(name)
        json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            if meta.get("registered_by") != key:
                raise ValueError(
                    f"{key}[{i}]: dataset name {name!r} is already registered (a Detectron2 "
                    "builtin or an embedded dataset); choose another name for your data"
                )
            if (meta.get("json_file"), meta.get("image_root")) == (json_file, image_root):
                continue
            # an earlier registration of ours in this process, with other files: replace it
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {"registered_by": key}, json_file, image_root)
    return names


def register_config_datasets(cfg) -> list[str]:
    """Register the datasets of ``cfg.DATASETS.COCO_JSON`` (see :func:`register_coco_json_datasets`).

    Call it before ``DATASETS.TRAIN`` / ``DATASETS.TEST`` are resolved: ``tools/train_net.py``
    does when it loads the config, :class:`plugins.d2.engine.Trainer` when it is built.

    Returns:
        The registered names (empty if the config has no such key or an empty list).
    """
    return register_coco_json_datasets(cfg.DATASETS.get("COCO_JSON", ()))


def prepare_dataset(name: str) -> None:
    """Make sure the metadata of an embedded dataset points at its generated files."""
    if name in SHAPES_DATASETS and MetadataCatalog.get(name).get("json_file") is None:
        json_file, image_root = _split_paths(SHAPES_DATASETS[name])
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root)


def check_datasets(
    names: Iterable[str],
    cfg=None,
    *,
    hint: str | None = None,
    keys: str = "DATASETS.TRAIN / DATASETS.TEST",
) -> None:
    """Fail early, with a helpful message, if a dataset cannot be loaded.

    Args:
        names: dataset names, e.g. ``cfg.DATASETS.TRAIN + cfg.DATASETS.TEST``.
        cfg: the config, if known: the message then names commands for its architecture.
            Default ``None``.
        hint: the "how to run without it" sentence; default :func:`dataset_hint` of ``cfg``
            (YAML commands; :func:`lazy_dataset_hint` for LazyConfigs).
        keys: the config keys that name the datasets, for the message.

    Raises:
        DatasetMissingError: a name is not registered, or its ``json_file`` / ``image_root``
            (e.g. Detectron2's COCO under ``$DETECTRON2_DATASETS``) does not exist.
    """
    registered = set(DatasetCatalog.list())
    hint = dataset_hint(cfg) if hint is None else hint
    for name in names:
        if name not in registered:
            raise DatasetMissingError(
                f"Dataset {name!r} is not registered ({keys}). "
                f"Embedded datasets: {sorted(SHAPES_DATASETS)}; Detectron2 registers COCO as "
                f"e.g. 'coco_2017_train'. {hint}"
            )
        if name in SHAPES_DATASETS:
            continue  # generated on first use
        meta = MetadataCatalog.get(name)
        for key in ("json_file", "image_root"):
            path = meta.get(key)
            if path and not os.path.exists(path) and meta.get("registered_by"):
                raise DatasetMissingError(
                    f"Dataset {name!r} ({meta.registered_by}): {key} {path!r} does not exist"
                )
            if path and not os.path.exists(path):
                root = os.environ.get("DETECTRON2_DATASETS", "datasets")
                raise DatasetMissingError(
                    f"Dataset {name!r}: {key} {path!r} does not exist. Detectron2 looks for "
                    f"builtin datasets under $DETECTRON2_DATASETS (now {root!r}); see "
                    "https://detectron2.readthedocs.io/en/latest/tutorials/builtin_datasets.html "
                    f"for the expected layout. {hint}"
                )


register_shapes()
