"""Your own COCO-format data through tools/train_net.py: --coco-dataset / DATASETS.COCO_JSON."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from tests.d2.test_train_net import DEMO, ROOT, TINY, ap_line, run
from tests.own_coco import CATEGORIES, write_own_coco


# for the runs that must stop before training: if one did not, it would end quickly
QUICK = [*TINY, "SOLVER.MAX_ITER", "1", "DATASETS.TEST", "()"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_own_coco(tmp_path_factory.mktemp("own_coco"))


def _datasets(data) -> list[str]:
    return [
        "--coco-dataset", "my_train", data.train_json, data.train_images,
        "--coco-dataset", "my_val", data.val_json, data.val_images,
        "DATASETS.TRAIN", "('my_train',)", "DATASETS.TEST", "('my_val',)",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def train_net():
    """tools/train_net.py as a module, to call its ``run(argv)`` in this process."""
    spec = importlib.util.spec_from_file_location(
        "_train_net", os.path.join(ROOT, "tools", "train_net.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trains_and_evaluates_own_coco_json(data, tmp_path):
    out = str(tmp_path / "out")
    r = run(
        "--config-file", DEMO, *_datasets(data), *TINY,
        "MODEL.EFFICIENTDET.NUM_CLASSES", "3", "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", out,
    )  # fmt: skip
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "Evaluation results for my_val" in log
    float(ap_line(log).split(",")[0])
    # detections are reported in the json's own category ids (3, 5, 8) and image ids
    with open(os.path.join(out, "inference", "coco_instances_results.json")) as f:
        results = json.load(f)
    assert results
    assert {d["category_id"] for d in results} <= {cat_id for cat_id, _ in CATEGORIES}
    with open(data.val_json) as f:
        assert {d["image_id"] for d in results} == {img["id"] for img in json.load(f)["images"]}
    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu")
    # 9 anchors x 3 classes in the class head's last conv
    assert ckpt["model"]["head.class_net.predict.pw.bias"].numel() == 9 * 3
    # the run's config.yaml names the datasets, so it can be evaluated again as it is
    with open(os.path.join(out, "config.yaml")) as f:
        saved = f.read()
    assert "my_train" in saved and data.train_json in saved


def test_num_classes_that_differs_from_the_json_is_refused(data, train_net, capsys, tmp_path):
    argv = ["--config-file", DEMO, *_datasets(data), *QUICK, "OUTPUT_DIR", str(tmp_path)]
    assert train_net.run(argv) == 1  # the demo config says 6 classes
    err = capsys.readouterr().err
    assert "MODEL.EFFICIENTDET.NUM_CLASSES" in err and "3" in err and data.train_json in err


def test_bad_dataset_entries_are_refused(data, train_net, capsys, tmp_path):
    out = [*QUICK, "OUTPUT_DIR", str(tmp_path)]
    assert train_net.run(["--config-file", DEMO, "DATASETS.COCO_JSON", "[('a', 'b')]", *out]) == 1
    err = capsys.readouterr().err
    assert "DATASETS.COCO_JSON[0]" in err and "(name, json_file, image_root)" in err
    argv = ["--config-file", DEMO, "--coco-dataset", "shapes_train", data.train_json, "x", *out]
    assert train_net.run(argv) == 1
    assert "'shapes_train' is already registered" in capsys.readouterr().err
    missing = os.path.join(data.root, "annotations", "absent.json")
    argv = ["--config-file", DEMO, "--coco-dataset", "mine", missing, data.val_images]
    assert train_net.run([*argv, *out, "DATASETS.TRAIN", "('mine',)"]) == 1
    err = capsys.readouterr().err
    assert "'mine'" in err and missing in err and "does not exist" in err


def test_registration_is_idempotent_and_follows_new_paths(data, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from plugins.d2.datasets import register_coco_json_datasets

    entry = ("own_idem", data.val_json, data.val_images)
    assert register_coco_json_datasets([entry, ("own_idem_2", *entry[1:])]) == [
        "own_idem",
        "own_idem_2",
    ]
    register_coco_json_datasets([entry])  # the same triple again: no error
    moved = str(tmp_path / "elsewhere.json")
    register_coco_json_datasets([("own_idem", moved, data.val_images)])
    assert MetadataCatalog.get("own_idem").json_file == moved
    assert len(DatasetCatalog.get("own_idem_2")) == 2
    assert MetadataCatalog.get("own_idem_2").thing_classes == ["disc", "block", "bar"]
    with pytest.raises(ValueError, match="given twice"):
        register_coco_json_datasets([entry, entry])
