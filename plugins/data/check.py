"""One dataset check for both frameworks: a COCO json and its image folder, before training.

Framework-free (json, numpy, Pillow). The Detectron2 adapter (:mod:`plugins.d2.data_check`)
and the MMDetection adapter (:mod:`plugins.mm.data_check`) run it on every COCO-format
dataset of a config before training or testing, and drop the boxes it reports as bad from
what the framework loads. Command line::

    python -m plugins.data check ANN.json IMAGE_DIR [--num-classes N] [--json]

What is an error (:class:`DatasetCheckError`, a one-line message naming the file):

* the file is missing, not UTF-8 or not valid JSON (with line and column);
* a missing top-level key (``images``, ``categories``, and ``annotations`` for training) or
  a record without its keys (image: ``id``, ``file_name``, ``width``, ``height``;
  annotation: ``id``, ``image_id``, ``category_id``, ``bbox``; category: ``id``, ``name``);
* duplicate ids; annotations whose ``category_id`` is not in ``categories`` or whose
  ``image_id`` is not in ``images``; a ``bbox`` that is not 4 numbers;
* images that are missing, unreadable (their header does not parse) or whose size (after
  the EXIF orientation both frameworks apply) differs from the json's ``width`` / ``height``;
* no valid box left to train on;
* a model class count that differs from the dataset's (:func:`check_num_classes`).

What is dropped (counted per kind and reported in one summary line, :meth:`DatasetReport.summary`):
boxes with a NaN / inf / null coordinate, a zero or negative width or height, or no overlap
with the image. Boxes that only extend past the border (by more than
:data:`BORDER_TOLERANCE` px) are counted but kept: the frameworks' transforms clip them.

Images are checked from their headers only (Pillow's lazy open: a few seconds for COCO val);
pixel data truncated after a valid header is found only with ``decode_images=True``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

__all__ = [
    "BORDER_TOLERANCE",
    "BOX_KINDS",
    "DatasetCheckError",
    "DatasetReport",
    "check_coco_dataset",
    "check_num_classes",
    "classify_boxes",
    "read_coco_json",
]

BORDER_TOLERANCE: float = 1.0
"""Pixels a box may extend past the image border before it is counted as "past the border"."""

BOX_OK, BOX_NON_FINITE, BOX_NON_POSITIVE, BOX_OUTSIDE, BOX_PAST_BORDER = range(5)
BOX_KINDS: dict[int, str] = {
    BOX_NON_FINITE: "NaN/inf",
    BOX_NON_POSITIVE: "zero/negative size",
    BOX_OUTSIDE: "outside the image",
}
"""Codes of :func:`classify_boxes` that are dropped, with the name used in reports."""

_IMAGE_KEYS = ("id", "file_name", "width", "height")
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox")
_CATEGORY_KEYS = ("id", "name")
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # rotated by 90 or 270 degrees
_EXAMPLES = 3  # names listed in a message before "..."


class DatasetCheckError(ValueError):
    """The dataset cannot be used as it is; the message is one line that names the file."""


@dataclass(frozen=True)
class DatasetReport:
    """Result of :func:`check_coco_dataset` on a dataset that passed.

    Attributes:
        ann_file: The COCO json that was checked.
        image_root: Its image folder.
        num_images: Entries in ``images``.
        num_annotations: Entries in ``annotations`` (0 when the key is absent).
        num_valid_boxes: Non-crowd boxes that are kept.
        categories: ``(id, name)`` of every category, sorted by id.
        dropped: Dropped boxes per kind (names of :data:`BOX_KINDS`; kinds with 0 omitted).
        past_border: Kept boxes that extend past the image border.
        bad_annotation_ids: ``id`` of every dropped annotation.
        has_annotations: Whether the file has an ``annotations`` key.
        images_checked: Whether the image files were opened.
        seconds: Wall time of the check.
    """

    ann_file: str
    image_root: str
    num_images: int
    num_annotations: int
    num_valid_boxes: int
    categories: tuple[tuple[int | str, str], ...]
    dropped: dict[str, int] = field(default_factory=dict)
    past_border: int = 0
    bad_annotation_ids: frozenset = frozenset()
    has_annotations: bool = True
    images_checked: bool = True
    seconds: float = 0.0

    @property
    def class_names(self) -> tuple[str, ...]:
        """Category names in id order (the class order of both frameworks)."""
        return tuple(name for _, name in self.categories)

    @property
    def num_dropped(self) -> int:
        """Number of dropped annotations."""
        return sum(self.dropped.values())

    def summary(self) -> str | None:
        """One warning line about dropped / past-border boxes, or ``None`` when all is clean."""
        parts = []
        if not self.has_annotations:
            parts.append("no 'annotations' key: usable for inference only")
        if self.dropped:
            kinds = ", ".join(f"{kind}: {n}" for kind, n in self.dropped.items())
            parts.append(
                f"dropped {self.num_dropped} of {self.num_annotations} boxes ({kinds}); "
                f"{self.num_valid_boxes} valid boxes remain"
            )
        if self.past_border:
            parts.append(
                f"{self.past_border} boxes extend more than {BORDER_TOLERANCE:g} px past the "
                "image border (kept; the transforms clip them)"
            )
        return f"{self.ann_file}: {'; '.join(parts)}" if parts else None

    def to_dict(self) -> dict:
        """Plain-JSON form (without the set of bad ids, whose count is in ``dropped``)."""
        return {
            "ann_file": self.ann_file,
            "image_root": self.image_root,
            "num_images": self.num_images,
            "num_annotations": self.num_annotations,
            "num_valid_boxes": self.num_valid_boxes,
            "num_categories": len(self.categories),
            "class_names": list(self.class_names),
            "dropped": dict(self.dropped),
            "past_border": self.past_border,
            "has_annotations": self.has_annotations,
            "images_checked": self.images_checked,
            "seconds": round(self.seconds, 3),
            "summary": self.summary(),
        }


def classify_boxes(boxes_xywh: np.ndarray, image_wh: np.ndarray) -> np.ndarray:
    """Classify COCO boxes against the size of their image.

    Args:
        boxes_xywh: ``(N, 4)`` float array of COCO ``[x, y, w, h]`` (absolute pixels).
        image_wh: ``(N, 2)`` width and height of each box's image.

    Returns:
        ``(N,)`` int8 codes: 0 valid, 1 NaN/inf (also when ``x + w`` overflows),
        2 zero/negative width or height, 3 no overlap with the image, 4 valid but more than
        :data:`BORDER_TOLERANCE` px past the border. When several apply, the lowest non-zero
        code wins.
    """
    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    sizes = np.asarray(image_wh, dtype=np.float64).reshape(-1, 2)
    if len(sizes) != len(boxes):
        raise ValueError(f"image_wh: expected shape ({len(boxes)}, 2), got {sizes.shape}")
    x, y, w, h = boxes.T
    width, height = sizes.T
    codes = np.zeros(len(boxes), dtype=np.int8)
    with np.errstate(invalid="ignore", over="ignore"):
        x2, y2 = x + w, y + h
        finite = np.isfinite(boxes).all(axis=1) & np.isfinite(x2) & np.isfinite(y2)
        positive = (w > 0) & (h > 0)
        overlaps = (x2 > 0) & (y2 > 0) & (x < width) & (y < height)
        tol = BORDER_TOLERANCE
        past = (x < -tol) | (y < -tol) | (x2 > width + tol) | (y2 > height + tol)
    codes[past] = BOX_PAST_BORDER
    codes[~overlaps] = BOX_OUTSIDE
    codes[~positive] = BOX_NON_POSITIVE
    codes[~finite] = BOX_NON_FINITE
    return codes


def read_coco_json(path: str | os.PathLike) -> dict:
    """Read a JSON object from ``path``; every failure is one line naming the file.

    Raises:
        DatasetCheckError: missing / unreadable file, not UTF-8, invalid JSON (line and
            column), or a top level that is not an object.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DatasetCheckError(f"{path}: annotation file not found") from None
    except OSError as e:
        raise DatasetCheckError(f"{path}: cannot read the annotation file ({e.strerror})") from None
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as e:
        raise DatasetCheckError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None
    except UnicodeDecodeError as e:
        raise DatasetCheckError(
            f"{path}: not a JSON text file (invalid UTF-8 at byte {e.start})"
        ) from None
    if not isinstance(obj, dict):
        raise DatasetCheckError(
            f"{path}: expected a JSON object with 'images', 'annotations' and 'categories', "
            f"got a JSON {type(obj).__name__}"
        )
    return obj


def _examples(items: Sequence, total: int | None = None) -> str:
    total = len(items) if total is None else total
    shown = ", ".join(str(i) for i in items[:_EXAMPLES])
    return shown + (f", ... ({total} in all)" if total > _EXAMPLES else "")


def _check_records(ann_file: str, key: str, records: list, required: tuple[str, ...]) -> None:
    """Every record of ``records`` must be an object holding ``required`` keys."""
    bad = [
        i
        for i, r in enumerate(records)
        if not isinstance(r, dict) or not all(k in r for k in required)
    ]
    if not bad:
        return
    first = records[bad[0]]
    if isinstance(first, dict):
        what = "lacks " + ", ".join(repr(k) for k in required if k not in first)
    else:
        what = f"is a JSON {type(first).__name__}, not an object"
    more = f" ({len(bad)} {key} records have problems)" if len(bad) > 1 else ""
    raise DatasetCheckError(
        f"{ann_file}: {key}[{bad[0]}] {what}; every {key} record needs "
        f"{', '.join(repr(k) for k in required)}{more}"
    )


def _check_ids(ann_file: str, key: str, records: list) -> list[str]:
    """Ids must be integers or strings and unique; returns problems (empty when fine)."""
    ids = [r["id"] for r in records]
    wrong = [i for i, v in enumerate(ids) if isinstance(v, bool) or not isinstance(v, (int, str))]
    if wrong:
        i = wrong[0]
        raise DatasetCheckError(
            f"{ann_file}: {key}[{i}].id must be an integer or a string, got {ids[i]!r}"
        )
    if len(set(ids)) == len(ids):
        return []
    dups = [v for v, n in Counter(ids).items() if n > 1]
    return [f"duplicate {key} ids {_examples(dups)}"]


def _open_image(path: str, decode: bool) -> tuple[int, int]:
    """Width and height as the frameworks see the image (EXIF orientation applied)."""
    with Image.open(path) as im:
        width, height = im.size
        if decode:
            im.load()
        if "exif" in im.info:  # parsed from the header; reading it decodes no pixels
            if im.getexif().get(_EXIF_ORIENTATION, 1) in _SWAPPING_ORIENTATIONS:
                width, height = height, width
    return width, height


def _check_images(ann_file: str, image_root: str, images: list[dict], decode: bool) -> list[str]:
    """Open every image lazily; returns problems (missing / unreadable / size mismatch)."""
    if not os.path.isdir(image_root):
        return [f"image folder {image_root!r} does not exist"]
    missing: list[str] = []
    unreadable: list[str] = []
    mismatched: list[str] = []
    for img in images:
        path = os.path.join(image_root, img["file_name"])
        try:
            width, height = _open_image(path, decode)
        except FileNotFoundError:
            missing.append(img["file_name"])
            continue
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for a broken file
            unreadable.append(f"{img['file_name']} ({type(e).__name__}: {e})")
            continue
        if (width, height) != (img["width"], img["height"]):
            mismatched.append(
                f"{img['file_name']} is {width}x{height}, json says {img['width']}x{img['height']}"
            )
    problems = []
    if missing:
        problems.append(f"{len(missing)} images missing under {image_root}: {_examples(missing)}")
    if unreadable:
        problems.append(f"{len(unreadable)} images unreadable or corrupt: {_examples(unreadable)}")
    if mismatched:
        problems.append(
            f"{len(mismatched)} images whose size differs from the json (width x height): "
            f"{_examples(mismatched)}"
        )
    return problems


def _box_array(ann_file: str, anns: list[dict]) -> np.ndarray:
    """``(N, 4)`` float64 boxes; JSON null becomes NaN; anything else malformed is an error."""
    if not anns:
        return np.zeros((0, 4), dtype=np.float64)
    try:  # fast path: all numbers (no null, no string; numpy would parse "4" as 4.0)
        boxes = np.array([a["bbox"] for a in anns])
        if boxes.ndim == 2 and boxes.shape[1] == 4 and boxes.dtype.kind in "iuf":
            return boxes.astype(np.float64)
    except ValueError:  # ragged
        pass
    for i, a in enumerate(anns):
        b = a["bbox"]
        ok = isinstance(b, list) and len(b) == 4
        ok = ok and all(v is None or (isinstance(v, (int, float)) and v is not True) for v in b)
        if not ok:
            raise DatasetCheckError(
                f"{ann_file}: annotations[{i}] (id {a['id']}): bbox must be [x, y, width, "
                f"height] (4 numbers), got {b!r:.80}"
            )
    return np.array([a["bbox"] for a in anns], dtype=np.float64)  # null -> NaN


def _positive_sizes(ann_file: str, images: list[dict]) -> np.ndarray:
    """``(M, 2)`` json width/height of every image (positive numbers); file names checked too."""
    for i, img in enumerate(images):
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise DatasetCheckError(
                f"{ann_file}: images[{i}] (id {img['id']}): file_name must be a non-empty "
                f"string, got {img['file_name']!r}"
            )
        for key in ("width", "height"):
            v = img[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise DatasetCheckError(
                    f"{ann_file}: images[{i}] (id {img['id']}): {key} must be a positive "
                    f"number, got {v!r}"
                )
    return np.array([(img["width"], img["height"]) for img in images], dtype=np.float64)


_CACHE: dict[tuple, DatasetReport] = {}


def check_coco_dataset(
    ann_file: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    require_annotations: bool = True,
    check_images: bool = True,
    decode_images: bool = False,
    use_cache: bool = True,
) -> DatasetReport:
    """Check a COCO detection json and its image folder (see the module docstring).

    Args:
        ann_file: COCO json.
        image_root: Folder that ``file_name`` is relative to.
        require_annotations: Training data: ``annotations`` must exist and hold at least one
            valid box. With ``False`` (inference / test sets) a file without ``annotations``
            passes (the summary says so). Default ``True``.
        check_images: Open every image's header. Default ``True``.
        decode_images: Also decode every image's pixels (slow; finds truncated files).
            Default ``False``.
        use_cache: Return the report of an earlier identical call while the json and the
            image folder are unchanged (same size and modification times; an image edited
            in place is not noticed). Default ``True``.

    Returns:
        A :class:`DatasetReport`; ``bad_annotation_ids`` are the annotations to drop.

    Raises:
        DatasetCheckError: the first kind of structural problem, or every image / id /
            reference problem found, in one line starting with ``ann_file``.
    """
    ann_file = os.fspath(ann_file)
    image_root = os.fspath(image_root)
    key = None
    if use_cache:
        try:
            st = os.stat(ann_file)
            folder = os.stat(image_root).st_mtime_ns if check_images else None
        except OSError:
            pass
        else:  # the folder's time changes when an image is added, removed or renamed
            key = (
                os.path.abspath(ann_file),
                st.st_mtime_ns,
                st.st_size,
                os.path.abspath(image_root),
                folder,
                require_annotations,
                check_images,
                decode_images,
            )
            if key in _CACHE:
                return _CACHE[key]
    start = time.perf_counter()
    coco = read_coco_json(ann_file)
    required = ("images", "annotations", "categories")
    missing = [k for k in required if k not in coco]
    if not require_annotations and "annotations" in missing:
        missing.remove("annotations")
    if missing:
        raise DatasetCheckError(
            f"{ann_file}: missing top-level key {', '.join(repr(k) for k in missing)} "
            "(a COCO detection file has 'images', 'annotations' and 'categories')"
        )
    for k in required:
        if k in coco and not isinstance(coco[k], list):
            raise DatasetCheckError(
                f"{ann_file}: '{k}' must be a list, got a JSON {type(coco[k]).__name__}"
            )
    images: list = coco["images"]
    anns: list = coco.get("annotations", [])
    cats: list = coco["categories"]
    _check_records(ann_file, "images", images, _IMAGE_KEYS)
    _check_records(ann_file, "annotations", anns, _ANNOTATION_KEYS)
    _check_records(ann_file, "categories", cats, _CATEGORY_KEYS)
    if not cats:
        raise DatasetCheckError(f"{ann_file}: 'categories' is empty")
    if not images:
        raise DatasetCheckError(f"{ann_file}: 'images' is empty")

    problems = []
    for k, records in (("categories", cats), ("images", images), ("annotations", anns)):
        problems += _check_ids(ann_file, k, records)
    cat_ids = {c["id"] for c in cats}
    image_index = {img["id"]: i for i, img in enumerate(images)}
    unknown_cats = Counter(a["category_id"] for a in anns if a["category_id"] not in cat_ids)
    if unknown_cats:
        problems.append(
            f"{sum(unknown_cats.values())} annotations have a category_id that is not in "
            f"'categories' (ids {_examples(sorted(unknown_cats, key=str))}; categories: "
            f"{_examples(sorted(cat_ids, key=str))})"
        )
    orphans = [a["id"] for a in anns if a["image_id"] not in image_index]
    if orphans:
        problems.append(
            f"{len(orphans)} annotations point at image ids not in 'images' "
            f"(annotation ids {_examples(orphans)})"
        )
    image_wh = _positive_sizes(ann_file, images)
    boxes = _box_array(ann_file, anns)
    if check_images:
        problems += _check_images(ann_file, image_root, images, decode_images)
    if problems:
        raise DatasetCheckError(f"{ann_file}: {'; '.join(problems)}")

    rows = np.array([image_index[a["image_id"]] for a in anns], dtype=np.int64)
    codes = classify_boxes(boxes, image_wh[rows])
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    kept = (codes == BOX_OK) | (codes == BOX_PAST_BORDER)
    counts = np.bincount(codes, minlength=len(BOX_KINDS) + 2)
    dropped = {name: int(counts[code]) for code, name in BOX_KINDS.items() if counts[code]}
    report = DatasetReport(
        ann_file=ann_file,
        image_root=image_root,
        num_images=len(images),
        num_annotations=len(anns),
        num_valid_boxes=int((kept & ~crowd).sum()),
        categories=tuple(
            sorted(
                ((c["id"], c["name"]) for c in cats), key=lambda c: (isinstance(c[0], str), c[0])
            )
        ),
        dropped=dropped,
        past_border=int(counts[BOX_PAST_BORDER]),
        bad_annotation_ids=frozenset(anns[i]["id"] for i in np.flatnonzero(~kept)),
        has_annotations="annotations" in coco,
        images_checked=check_images,
        seconds=time.perf_counter() - start,
    )
    if require_annotations and report.num_valid_boxes == 0:
        if not anns:
            reason = "'annotations' is empty"
        else:
            kinds = ", ".join(f"{k}: {n}" for k, n in dropped.items()) or "none dropped"
            crowds = int((kept & crowd).sum())
            reason = (
                f"none of its {len(anns)} boxes is valid ({kinds}"
                + (f"; {crowds} crowd boxes, which are ignored in training" if crowds else "")
                + ")"
            )
        raise DatasetCheckError(f"{ann_file}: no valid box to train on: {reason}")
    if key is not None:
        _CACHE[key] = report
    return report


def check_num_classes(
    report: DatasetReport,
    num_classes: int,
    key: str,
    class_names: Sequence[str] | None = None,
    classes_key: str = "classes",
) -> None:
    """The model must predict as many classes as the dataset has.

    Args:
        report: The dataset's :class:`DatasetReport`.
        num_classes: The model's class count (value of ``key``).
        key: The config key of ``num_classes``, named in the error (e.g.
            ``MODEL.EFFICIENTDET.NUM_CLASSES``, ``model.bbox_head.num_classes``).
        class_names: The classes the framework keeps (mmdet's ``metainfo.classes``);
            ``None`` means every category of the json (Detectron2). Default ``None``.
        classes_key: Config key of ``class_names``, named in the errors. Default ``"classes"``.

    Raises:
        DatasetCheckError: a name of ``class_names`` is not a category of the json, or
            ``num_classes`` differs from the number of classes.
    """
    if class_names is None:
        expected, source = len(report.categories), f"{report.ann_file} has"
        names = report.class_names
    else:
        known = set(report.class_names)
        absent = [n for n in class_names if n not in known]
        if absent:
            raise DatasetCheckError(
                f"{report.ann_file}: {classes_key} names {_examples(absent)} are not category "
                f"names of the file (its categories: {_examples(list(report.class_names))}); "
                "those classes would never be labelled"
            )
        expected, source = len(class_names), f"{classes_key} of {report.ann_file} has"
        names = tuple(class_names)
    if num_classes != expected:
        raise DatasetCheckError(
            f"{key} = {num_classes}, but {source} {expected} classes "
            f"({_examples(list(names))}): set {key} to {expected}"
        )
