"""Your own COCO-format data through tools/train_net.py: --coco-dataset / DATASETS.COCO_JSON.

Training and evaluation on such data run in tests/d2/test_distributed.py (two processes, one
run for both); here the checks that stop a run before training, and the registration.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from tests.d2.test_train_net import DEMO, ROOT, TINY
from tests.own_coco import write_own_coco

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
