"""A tiny COCO-format dataset of the kind a user brings (not a test module).

Used by ``tests/d2/test_own_data.py``, ``tests/d2/test_distributed.py`` and
``tests/mm/test_own_data.py``. Written with :func:`tests.coco_files.write_coco`, then made
"foreign": category ids 3, 5 and 8 (not 1..N) with names no other dataset here uses, sizes
unlike Shapes', and a training image without objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.coco_files import edit_json, write_coco

#: (id, name) of the categories, in id order (the class order of both frameworks).
CATEGORIES = ((3, "disc"), (5, "block"), (8, "bar"))
CLASSES = tuple(name for _, name in CATEGORIES)

_TRAIN = {  # (width, height) -> boxes [x, y, w, h]
    (192, 160): [[10, 12, 40, 40], [80, 30, 50, 20], [120, 90, 30, 44]],
    (160, 192): [[20, 100, 36, 36], [70, 20, 60, 60]],
    (192, 192): [],
    (176, 160): [[5, 5, 60, 30], [90, 70, 44, 44], [30, 110, 24, 30]],
}
_VAL = {
    (192, 160): [[30, 40, 48, 30], [110, 60, 40, 40]],
    (160, 176): [[12, 80, 56, 56], [90, 12, 40, 24]],
}


@dataclass(frozen=True)
class OwnCoco:
    """Paths of the written dataset (absolute, as ``str``)."""

    root: str
    train_json: str
    train_images: str
    val_json: str
    val_images: str


def _own_categories(coco: dict) -> None:
    coco["categories"] = [{"id": i, "name": n, "supercategory": "thing"} for i, n in CATEGORIES]
    for k, ann in enumerate(coco["annotations"]):
        ann["category_id"] = CATEGORIES[k % len(CATEGORIES)][0]


def _split(root: Path, boxes: dict) -> tuple[str, str]:
    ann_file, images = write_coco(root, boxes=list(boxes.values()), sizes=list(boxes))
    edit_json(ann_file, _own_categories)
    return ann_file, images


def write_own_coco(root: str | Path) -> OwnCoco:
    """Write 4 training images (one without objects) and 2 validation images under ``root``.

    Layout: ``train/ann.json``, ``train/images/``, ``val/ann.json``, ``val/images/``.
    """
    root = Path(root).absolute()
    train_json, train_images = _split(root / "train", _TRAIN)
    val_json, val_images = _split(root / "val", _VAL)
    return OwnCoco(str(root), train_json, train_images, val_json, val_images)
