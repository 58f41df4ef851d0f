"""Tests of the framework-free dataset check (plugins/data/check.py) and its command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plugins.data.__main__ import main as cli
from plugins.data.check import (
    DatasetCheckError,
    check_coco_dataset,
    check_num_classes,
    classify_boxes,
)
from tests.coco_files import edit_json, write_coco

NAN, INF = math.nan, math.inf


def test_clean_dataset_passes_with_exact_counts(tmp_path: Path) -> None:
    ann, img = write_coco(tmp_path)
    report = check_coco_dataset(ann, img, use_cache=False)
    assert (report.num_images, report.num_annotations, report.num_valid_boxes) == (3, 6, 6)
    assert report.class_names == ("a", "b")
    assert report.dropped == {} and report.bad_annotation_ids == frozenset()
    assert report.summary() is None


def test_bad_boxes_counted_per_kind_dropped_and_summarised_in_one_line(tmp_path: Path) -> None:
    boxes = [
        [[4, 4, 20, 16], [NAN, 1, 5, 5], [1, 1, INF, 5]],  # ids 1-3
        [[2, 2, 0, 5], [2, 2, 5, -3], [70, 2, 5, 5]],  # ids 4-6: zero, negative, outside
        [[-10, -10, 30, 30], [1, 1, None, 5]],  # ids 7-8: past the border (kept), null
    ]
    ann, img = write_coco(tmp_path, boxes=boxes)
    report = check_coco_dataset(ann, img, use_cache=False)
    assert report.dropped == {"NaN/inf": 3, "zero/negative size": 2, "outside the image": 1}
    assert report.bad_annotation_ids == frozenset({2, 3, 4, 5, 6, 8})
    assert (report.num_valid_boxes, report.past_border) == (2, 1)
    line = report.summary()
    assert line is not None and "\n" not in line and line.startswith(ann)
    assert "dropped 6 of 8 boxes" in line and "NaN/inf: 3" in line


def test_all_boxes_nan_is_an_error(tmp_path: Path) -> None:
    # the case: every bbox NaN trained on zero boxes and reported a plausible AP
    ann, img = write_coco(tmp_path, boxes=[[[NAN, NAN, NAN, NAN]]] * 3)
    with pytest.raises(DatasetCheckError, match="no valid box to train on.*NaN/inf: 3") as e:
        check_coco_dataset(ann, img, use_cache=False)
    assert str(e.value).startswith(ann) and "\n" not in str(e.value)


def test_crowd_only_boxes_are_not_enough(tmp_path: Path) -> None:
    ann, img = write_coco(tmp_path)
    edit_json(ann, lambda c: [a.update(iscrowd=1) for a in c["annotations"]])
    with pytest.raises(DatasetCheckError, match="6 crowd boxes"):
        check_coco_dataset(ann, img, use_cache=False)


def test_image_size_contradicting_the_json(tmp_path: Path) -> None:
    ann, img = write_coco(tmp_path)
    edit_json(ann, lambda c: c["images"][1].update(width=640, height=480))
    with pytest.raises(DatasetCheckError, match=r"0001.png is 64x48, json says 640x480"):
        check_coco_dataset(ann, img, use_cache=False)


def test_exif_rotation_is_applied_like_the_frameworks(tmp_path: Path) -> None:
    ann, img = write_coco(tmp_path, image_ext=".jpg")
    path = Path(img) / "0000.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the frameworks see 48 x 64
    with Image.open(path) as im:
        im.load()
    im.save(path, exif=exif)
    with pytest.raises(DatasetCheckError, match="0000.jpg is 48x64, json says 64x48"):
        check_coco_dataset(ann, img, use_cache=False)
    edit_json(ann, lambda c: c["images"][0].update(width=48, height=64))
    assert check_coco_dataset(ann, img, use_cache=False).num_images == 3


def test_json_without_annotations(tmp_path: Path) -> None:
    ann, img = write_coco(tmp_path, drop_annotations_key=True)
    with pytest.raises(DatasetCheckError, match="missing top-level key 'annotations'"):
        check_coco_dataset(ann, img, use_cache=False)
    report = check_coco_dataset(ann, img, require_annotations=False, use_cache=False)
    assert not report.has_annotations and "inference only" in report.summary()
    edit_json(ann, lambda c: c.update(annotations=[]))
    with pytest.raises(DatasetCheckError, match="'annotations' is empty"):
        check_coco_dataset(ann, img, use_cache=False)


def test_unknown_category_ids_are_an_error(tmp_path: Path) -> None:
    ann, img = write_coco(tmp_path)
    edit_json(ann, lambda c: c["annotations"][0].update(category_id=7))
    with pytest.raises(DatasetCheckError, match=r"1 annotations have a category_id .*ids 7"):
        check_coco_dataset(ann, img, use_cache=False)


def test_bad_json_names_file_line_and_column(tmp_path: Path) -> None:
    ann, img = write_coco(tmp_path)
    Path(ann).write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DatasetCheckError) as e:
        check_coco_dataset(ann, img, use_cache=False)
    assert str(e.value).startswith(f"{ann}: invalid JSON at line 2, column 12")
    Path(ann).write_bytes(b"\x80\x81garbage")
    with pytest.raises(DatasetCheckError, match="not a JSON text file"):
        check_coco_dataset(ann, img, use_cache=False)
    with pytest.raises(DatasetCheckError, match="annotation file not found"):
        check_coco_dataset(tmp_path / "nope.json", img)


def test_missing_and_corrupt_images_found_before_training(tmp_path: Path) -> None:
    ann, img = write_coco(tmp_path, sizes=[(64, 48)] * 5, boxes=[[[1, 1, 5, 5]]] * 5)
    (Path(img) / "0001.png").unlink()
    (Path(img) / "0003.png").write_bytes(b"not an image at all")
    with pytest.raises(DatasetCheckError) as e:
        check_coco_dataset(ann, img, use_cache=False)
    msg = str(e.value)
    assert "1 images missing under" in msg and "0001.png" in msg
    assert "1 images unreadable or corrupt: 0003.png (UnidentifiedImageError" in msg
    assert "\n" not in msg


def test_truncated_pixels_need_decode(tmp_path: Path) -> None:
    ann, img = write_coco(tmp_path, image_ext=".jpg")
    path = Path(img) / "0002.jpg"
    path.write_bytes(path.read_bytes()[:-900])  # header intact, pixel data cut
    assert check_coco_dataset(ann, img, use_cache=False).num_images == 3
    with pytest.raises(DatasetCheckError, match="0002.jpg"):
        check_coco_dataset(ann, img, decode_images=True, use_cache=False)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("categories"), "missing top-level key 'categories'"),
        (lambda c: c.update(images={}), "'images' must be a list"),
        (lambda c: c["images"][2].pop("file_name"), r"images\[2\] lacks 'file_name'"),
        (lambda c: c["annotations"][1].pop("bbox"), r"annotations\[1\] lacks 'bbox'"),
        (lambda c: c["categories"].append(5), r"categories\[2\] is a JSON int"),
        (lambda c: c["images"][1].update(id=1), "duplicate images ids 1"),
        (lambda c: c["annotations"][3].update(id=1), "duplicate annotations ids 1"),
        (lambda c: c["annotations"][0].update(image_id=99), "point at image ids not in"),
        (lambda c: c["annotations"][0].update(bbox=[1, 2, 3]), r"bbox must be \[x, y"),
        (lambda c: c["annotations"][2].update(bbox=[1, 2, 3, "4"]), r"annotations\[2\] .*bbox"),
        (lambda c: c["images"][1].update(file_name=7), "file_name must be a non-empty string"),
        (lambda c: c["images"][0].update(width=0), "width must be a positive number"),
        (lambda c: c["images"][0].update(id=[1]), "id must be an integer or a string"),
        (lambda c: c.update(categories=[]), "'categories' is empty"),
    ],
)
def test_structure_errors_name_the_problem(tmp_path: Path, edit, message: str) -> None:
    ann, img = write_coco(tmp_path)
    edit_json(ann, edit)
    with pytest.raises(DatasetCheckError, match=message) as e:
        check_coco_dataset(ann, img, use_cache=False)
    assert str(e.value).startswith(ann) and "\n" not in str(e.value)


def test_classify_boxes_edges() -> None:
    boxes = np.array(
        [
            [0, 0, 64, 48],  # the whole image
            [63.5, 47.5, 0.5, 0.5],  # tiny, inside
            [64, 0, 5, 5],  # touches the right border from outside
            [1e308, 0, 1e308, 5],  # x + w overflows
            [-0.5, 0, 65.4, 48.9],  # within the 1 px tolerance
            [0, 0, 66, 48],  # 2 px past
            [NAN, 0, -1, 5],  # NaN wins over negative
        ]
    )
    codes = classify_boxes(boxes, np.tile([64, 48], (len(boxes), 1)))
    assert codes.tolist() == [0, 0, 3, 1, 0, 4, 1]
    with pytest.raises(ValueError, match=r"image_wh: expected shape \(7, 2\)"):
        classify_boxes(boxes, np.zeros((2, 2)))


def test_num_classes_mismatch_names_the_key(tmp_path: Path) -> None:
    report = check_coco_dataset(*write_coco(tmp_path), use_cache=False)
    check_num_classes(report, 2, "MODEL.EFFICIENTDET.NUM_CLASSES")
    with pytest.raises(DatasetCheckError, match=r"MODEL.EFFICIENTDET.NUM_CLASSES = 80, but .* 2"):
        check_num_classes(report, 80, "MODEL.EFFICIENTDET.NUM_CLASSES")
    check_num_classes(report, 1, "model.bbox_head.num_classes", ["b"], "metainfo.classes")
    with pytest.raises(DatasetCheckError, match="metainfo.classes names person are not category"):
        check_num_classes(report, 1, "model.bbox_head.num_classes", ["person"], "metainfo.classes")


def test_cache_follows_file_changes(tmp_path: Path) -> None:
    ann, img = write_coco(tmp_path)
    first = check_coco_dataset(ann, img)
    assert check_coco_dataset(ann, img) is first
    edit_json(ann, lambda c: c["annotations"][0].update(bbox=[NAN, 0, 1, 1], area=1.5))
    assert check_coco_dataset(ann, img).bad_annotation_ids == frozenset({1})


def test_cli_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann, img = write_coco(tmp_path, boxes=[[[1, 1, 5, 5], [NAN, 1, 5, 5]]] * 3)
    assert cli(["check", ann, img, "--json"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["ok"] and report["dropped"] == {"NaN/inf": 3} and report["num_valid_boxes"] == 3
    assert out.err.count("\n") == 1 and "warning:" in out.err
    assert cli(["check", ann, img, "--num-classes", "5"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m plugins.data check: error: --num-classes = 5, but")
    Path(img, "0000.png").unlink()
    assert cli(["check", ann, img, "--no-images"]) == 0
    assert cli(["check", ann, img]) == 1
    assert "0000.png" in capsys.readouterr().err
