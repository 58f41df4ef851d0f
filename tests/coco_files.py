"""Tiny COCO-format datasets written to disk for the dataset-check tests (core, d2, mm)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def write_coco(
    root: Path,
    boxes: list[list[list[float]]] | None = None,
    sizes: list[tuple[int, int]] | None = None,
    categories: list[dict] | None = None,
    image_ext: str = ".png",
    drop_annotations_key: bool = False,
) -> tuple[str, str]:
    """Write images (seeded noise) and a COCO json under ``root``.

    Args:
        root: folder to create (``images/`` and ``ann.json`` go inside).
        boxes: per image, ``[x, y, w, h]`` boxes (category 1, then 2 alternating). Default:
            two valid boxes per image.
        sizes: per image ``(width, height)``. Default: three 64x48 images.
        categories: the json's categories. Default :data:`CATEGORIES`.
        image_ext: ``".png"`` or ``".jpg"``.
        drop_annotations_key: leave ``annotations`` out of the json.

    Returns:
        ``(json path, image folder)`` as strings.
    """
    sizes = sizes or [(64, 48)] * 3
    boxes = boxes if boxes is not None else [[[4, 4, 20, 16], [30, 10, 25, 30]]] * len(sizes)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, (w, h) in enumerate(sizes):
        name = f"{i:04d}{image_ext}"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images_dir / name)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for box in boxes[i]:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 1 + len(anns) % 2,
                    "bbox": box,
                    "area": 100.0,
                    "iscrowd": 0,
                }
            )
    coco = {"images": images, "annotations": anns, "categories": categories or CATEGORIES}
    if drop_annotations_key:
        del coco["annotations"]
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps(coco))  # NaN / Infinity as JavaScript literals
    return str(ann_file), str(images_dir)


def edit_json(path: str, edit) -> None:
    """Load the json at ``path``, call ``edit(dict)``, write it back."""
    with open(path) as f:
        coco = json.load(f)
    edit(coco)
    with open(path, "w") as f:
        json.dump(coco, f)
