"""The dataset check in Detectron2 (plugins/d2/data_check.py, tools/train_net.py, Trainer)."""

from __future__ import annotations

import math
import os
import sys
import uuid
from pathlib import Path

import pytest

import plugins.d2  # noqa: F401  (first: stands in for a missing detectron2._C)

# isort: split
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances

from plugins.d2.data_check import check_dataset_contents, drop_bad_boxes
from plugins.d2.engine import Trainer
from plugins.data.check import DatasetCheckError
from tests.coco_files import write_coco

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo" / "efficientdet_shapes.yaml"
NAN = math.nan
sys.path.insert(0, str(ROOT / "tools"))
import train_net  # noqa: E402


def _register(tmp_path: Path, **kwargs) -> str:
    name = f"check_{uuid.uuid4().hex[:8]}"
    ann, img = write_coco(tmp_path / name, **kwargs)
    register_coco_instances(name, {}, ann, img)
    return name


def _cfg(train: str, test: str | None = None, *opts: str):
    return train_net.load_config(
        str(DEMO),
        [
            "DATASETS.TRAIN",
            f"('{train}',)",
            "DATASETS.TEST",
            f"('{test}',)" if test else "()",
            "MODEL.EFFICIENTDET.NUM_CLASSES",
            "2",
            "MODEL.EFFICIENTDET.VARIANT",
            "efficientdet_test",
            *opts,
        ],
    )


def test_bad_boxes_are_dropped_from_what_detectron2_loads(tmp_path: Path) -> None:
    boxes = [[[4, 4, 20, 16], [NAN, 1, 5, 5]], [[1, 1, math.inf, 5]], [[2, 2, 10, 10]]]
    name = _register(tmp_path, boxes=boxes)
    before = DatasetCatalog.get(name)
    assert sum(len(r["annotations"]) for r in before) == 4  # Detectron2 alone keeps NaN / inf
    reports = check_dataset_contents(_cfg(name, name))
    assert reports[name].dropped == {"NaN/inf": 2}
    after = DatasetCatalog.get(name)
    assert [[a["bbox"] for a in r["annotations"]] for r in after] == [
        [[4, 4, 20, 16]],
        [],
        [[2, 2, 10, 10]],
    ]
    # the evaluator's ground truth (read from the json) loses them too
    evaluator = Trainer.build_evaluator(_cfg(name, name), name, str(tmp_path / "eval"))
    assert sorted(evaluator._coco_api.anns) == [1, 4]
    check_dataset_contents(_cfg(name, name))  # again: no second wrapper
    assert DatasetCatalog.get(name) == after


def test_drop_bad_boxes_converts_box_modes() -> None:
    from detectron2.structures import BoxMode

    records = [
        {
            "width": 10,
            "height": 10,
            "annotations": [
                {"bbox": [1, 1, 5, 5], "bbox_mode": BoxMode.XYXY_ABS},
                {"bbox": [5, 5, 1, 1], "bbox_mode": BoxMode.XYXY_ABS},  # x2 < x1
            ],
        },
        {"file_name": "no size", "annotations": [{"bbox": [NAN] * 4}]},
    ]
    out, removed = drop_bad_boxes(records)
    assert removed == 1 and out[0]["annotations"] == records[0]["annotations"][:1]
    assert out[1] is records[1]


def test_all_nan_train_set_stops_train_net_before_training(tmp_path: Path, capsys) -> None:
    name = _register(tmp_path, boxes=[[[NAN, NAN, NAN, NAN]]] * 3)
    out = tmp_path / "out"
    argv = ["--config-file", str(DEMO), "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()"]
    code = train_net.run([*argv, "MODEL.EFFICIENTDET.NUM_CLASSES", "2", "OUTPUT_DIR", str(out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert (
        err.startswith("train_net.py: error: bad dataset: ") and "no valid box to train on" in err
    )
    assert not out.exists()  # nothing started


def test_num_classes_mismatch_names_the_key(tmp_path: Path) -> None:
    name = _register(tmp_path)
    with pytest.raises(DatasetCheckError, match="MODEL.EFFICIENTDET.NUM_CLASSES = 6, but"):
        check_dataset_contents(_cfg(name, None, "MODEL.EFFICIENTDET.NUM_CLASSES", "6"))


def test_test_set_may_lack_annotations_but_not_images(tmp_path: Path) -> None:
    train = _register(tmp_path)
    test = _register(tmp_path, drop_annotations_key=True)
    assert not check_dataset_contents(_cfg(train, test))[test].has_annotations
    os.remove(DatasetCatalog.get(test)[0]["file_name"])
    with pytest.raises(DatasetCheckError, match="1 images missing"):
        Trainer(_cfg(train, test, "OUTPUT_DIR", str(tmp_path / "out")))


def test_shapes_datasets_are_checked() -> None:
    cfg = train_net.load_config(str(DEMO), [])
    reports = check_dataset_contents(cfg)
    assert reports["shapes_train"].num_valid_boxes == 1431
    assert reports["shapes_val"].num_valid_boxes == 300
    assert reports["shapes_train"].summary() is None
