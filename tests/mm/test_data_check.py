"""The dataset check in MMDetection (plugins/mm/data_check.py, tools/mm_train.py / mm_test.py)."""

from __future__ import annotations

import math
from pathlib import Path

import mmdet.models  # noqa: F401
import pytest
from mmdet.registry import DATASETS, METRICS
from mmengine.registry import init_default_scope

import plugins.mm  # noqa: F401
from plugins.data.check import DatasetCheckError
from plugins.mm.data_check import prepare_datasets
from tests.coco_files import edit_json, write_coco
from tests.mm.test_tools import _load_tool

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "mmdet" / "demo" / "efficientdet_shapes.py"
NAN, INF = math.nan, math.inf


def _config(tmp_path: Path, **kwargs) -> Path:
    """A config file: the Shapes demo trained and validated on a tiny COCO json (classes a, b)."""
    ann, img = write_coco(tmp_path / "data", **kwargs)
    path = tmp_path / "cfg.py"
    dataset = (
        f"dict(_delete_=True, type='CocoDataset', data_root='{tmp_path / 'data'}/', "
        f"ann_file='{Path(ann).name}', data_prefix=dict(img='images/'), "
        "metainfo=dict(classes=('a', 'b')), filter_cfg=dict(filter_empty_gt=False), "
        "pipeline=_base_.train_pipeline)"
    )
    path.write_text(
        f"_base_ = '{DEMO}'\n"
        "model = dict(bbox_head=dict(num_classes=2))\n"
        f"train_dataloader = dict(dataset={dataset})\n"
        f"val_dataloader = dict(dataset={dataset.replace('train_pipeline', 'test_pipeline')})\n"
        f"val_evaluator = dict(_delete_=True, type='CocoMetric', ann_file='{ann}', metric='bbox')\n"
        "test_dataloader = val_dataloader\n"
        "test_evaluator = val_evaluator\n"
    )
    return path


def _boxes(dataset) -> list[list[float]]:
    return [i["bbox"] for d in dataset.load_data_list() for i in d["instances"]]


def test_bad_boxes_are_dropped_from_what_mmdet_trains_and_evaluates_on(tmp_path: Path) -> None:
    init_default_scope("mmdet")  # the pipelines' transforms
    train = _load_tool("mm_train")
    boxes = [[[4, 4, 20, 16], [1, 1, INF, 5]], [[NAN, 1, 5, 5]], [[2, 2, 10, 10]]]
    cfg = train.load_config(str(_config(tmp_path, boxes=boxes)))
    plain = DATASETS.build({**cfg.train_dataloader.dataset, "lazy_init": True})
    assert [4, 4, 24, 20] in _boxes(plain) and any(math.isinf(b[2]) for b in _boxes(plain))
    prepare_datasets(cfg, ("train_dataloader", "val_dataloader"), ("val_evaluator",))
    assert cfg.train_dataloader.dataset.type == "PluginsCocoDataset"
    checked = DATASETS.build({**cfg.train_dataloader.dataset, "lazy_init": True})
    assert _boxes(checked) == [[4, 4, 24, 20], [2, 2, 12, 12]]
    assert cfg.val_evaluator.type == "PluginsCocoMetric"
    metric = METRICS.build(cfg.val_evaluator)
    assert sorted(metric._coco_api.anns) == [1, 4]


def test_size_mismatch_stops_mm_train_before_training(tmp_path: Path, capsys) -> None:
    config = _config(tmp_path)
    edit_json(str(tmp_path / "data" / "ann.json"), lambda c: c["images"][2].update(height=96))
    train = _load_tool("mm_train")
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as info:
        train.main([str(config), "--work-dir", str(work)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("mm_train: error: ") and "train_dataloader.dataset: " in err
    assert "0002.png is 64x48, json says 64x96" in err
    assert not work.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("annotations"), "missing top-level key 'annotations'"),
        (lambda c: c["annotations"][0].update(category_id=3), "category_id that is not in"),
        (lambda c: c.update(categories=[{"id": 1, "name": "a"}, {"id": 2, "name": "c"}]),
         "metainfo.classes names b are not category names"),
    ],
)  # fmt: skip
def test_label_errors_are_reported(tmp_path: Path, edit, message: str) -> None:
    train = _load_tool("mm_train")
    config = _config(tmp_path)
    edit_json(str(tmp_path / "data" / "ann.json"), edit)
    cfg = train.load_config(str(config))
    with pytest.raises(DatasetCheckError, match=message):
        prepare_datasets(cfg, ("train_dataloader",), ())


def test_num_classes_mismatch_names_the_head_key(tmp_path: Path) -> None:
    test = _load_tool("mm_test")
    config = _config(tmp_path)
    args = test.parse_args([str(config), str(tmp_path / "absent.pth")])
    cfg = test.load_config(args.config, {"model.bbox_head.num_classes": 80})
    with pytest.raises(DatasetCheckError, match=r"model.bbox_head.num_classes = 80, but"):
        prepare_datasets(cfg, ("test_dataloader",), ("test_evaluator",))


def test_shapes_dataset_is_checked_on_load() -> None:
    dataset = DATASETS.build(dict(type="PluginsShapesDataset", split="val", pipeline=[]))
    assert sum(len(d["instances"]) for d in dataset.load_data_list()) == 300
    assert dataset._bad_annotation_ids == frozenset()
