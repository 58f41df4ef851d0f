"""tools/lazyconfig_train_net.py has tools/train_net.py's safety checks: the dataset check before
training, ``--coco-dataset`` and the divergence guard.

Runs that train are ``run()`` in a child forked from this process (tests/forked.py): the tiny
``efficientdet_test`` variant of the EfficientDet demo, 2 images per batch.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

from plugins.safe_load import load_checkpoint_file
from tests.coco_files import edit_json, write_coco
from tests.d2.test_guard_resume import DIVERGENCE_CASES
from tests.d2.test_lazyconfig import DEMO, REPO, TINY
from tests.forked import exit_code, run_forked
from tests.own_coco import write_own_coco
from tests.zoo_checks import import_tool

NAN = math.nan


@pytest.fixture(scope="module")
def tool():
    return import_tool("lazyconfig_train_net")


def _own(name: str, json_file: str, images: str) -> list[str]:
    """``--coco-dataset`` for ``name``, used for training and test."""
    return [
        "--coco-dataset", name, json_file, images,
        f"dataloader.train.dataset.names={name}", f"dataloader.test.dataset.names={name}",
    ]  # fmt: skip


def _nan_boxes(root: Path) -> tuple[str, str]:
    return write_coco(root, boxes=[[[NAN, NAN, NAN, NAN]]] * 3)


def _missing_image(root: Path) -> tuple[str, str]:
    json_file, images = write_coco(root)
    os.remove(os.path.join(images, "0001.png"))
    return json_file, images


@pytest.mark.parametrize(
    "write, message",
    [(_nan_boxes, "no valid box to train on"), (_missing_image, "1 images missing")],
    ids=["nan_boxes", "missing_image"],
)
def test_bad_dataset_stops_before_training(tool, tmp_path, capsys, write, message):
    json_file, images = write(tmp_path / "data")
    out = tmp_path / "out"
    name = f"lazy_bad_{write.__name__.strip('_')}"
    argv = ["--config-file", DEMO, *_own(name, json_file, images), "model.network.num_classes=2"]
    assert tool.run([*argv, f"train.output_dir={out}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lazyconfig_train_net.py: error: bad dataset: ")
    assert message in err[0] and repr(name) in err[0]
    assert not out.exists()  # nothing started


@pytest.mark.parametrize(
    "demo, key",
    [
        ("efficientdet", "model.network.num_classes"),
        ("retinanet", "model.num_classes"),
        ("cornernet", "model.num_classes"),
    ],
)
def test_class_count_that_differs_from_the_json_names_the_lazy_key(
    tool, tmp_path, capsys, demo, key
):
    json_file, images = write_coco(tmp_path / "data")  # 2 categories; the demos have 6
    config = str(REPO / "configs" / "lazy" / "demo" / f"{demo}_shapes.py")
    argv = ["--config-file", config, *_own(f"lazy_classes_{demo}", json_file, images)]
    assert tool.run([*argv, f"train.output_dir={tmp_path / 'out'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lazyconfig_train_net.py: error: bad dataset: ")
    assert f"{key} = 6, but" in err[0] and json_file in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "config, demo, key",
    [
        ("efficientdet_d0.py", "efficientdet_shapes.py", "model.network.num_classes"),
        ("retinanet_R_50_FPN_1x.py", "retinanet_shapes.py", "model.num_classes"),
        ("cornernet_hourglass104.py", "cornernet_shapes.py", "model.num_classes"),
    ],
)
def test_missing_dataset_hint_names_lazyconfig_commands(tool, tmp_path, capsys, config, demo, key):
    path = str(REPO / "configs" / "lazy" / config)
    argv = ["--config-file", path, "dataloader.train.dataset.names=nope_train"]
    assert tool.run([*argv, f"train.output_dir={tmp_path / 'out'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lazyconfig_train_net.py: error: missing dataset")
    line = err[0]
    assert "'nope_train' is not registered (dataloader.train.dataset.names" in line
    assert "DATASETS.TRAIN" not in line and "train_net.py --config-file configs/demo" not in line
    assert f"{key}=<number of categories>" in line
    # the suggested demo exists and its class-count key is the one named for the family
    suggested = re.search(r"--config-file (configs/lazy/demo/\S+\.py)", line).group(1)
    assert suggested == f"configs/lazy/demo/{demo}"
    demo_cfg = tool.load_lazy_config(str(REPO / suggested))
    assert tool.lazy_num_classes(demo_cfg)[1] == key
    assert not (tmp_path / "out").exists()


def _run(argv: list[str], log: Path, record: Path | None = None) -> int:
    """``lazyconfig_train_net.py argv`` in a forked child; with ``record``, each evaluation's
    ground-truth annotation ids and results are written there. Returns the exit code."""
    tool = import_tool("lazyconfig_train_net")

    def main() -> int:
        if record is not None:
            evaluate = tool.inference_on_dataset

            def recorded(model, loader, evaluator):
                results = evaluate(model, loader, evaluator)
                seen = {"gt": sorted(evaluator._coco_api.anns), "results": results}
                record.write_text(json.dumps(seen))
                return results

            tool.inference_on_dataset = recorded
        return tool.run(argv)

    return exit_code(run_forked(main, log))


def test_coco_dataset_trains_and_evaluates(tmp_path, single_thread):
    data = write_own_coco(tmp_path / "data")  # 3 categories (ids 3, 5, 8)
    nan = {"id": 999, "image_id": 1, "category_id": 5, "bbox": [NAN, 2, 9, 9], "area": 81.0}
    edit_json(data.val_json, lambda coco: coco["annotations"].append({**nan, "iscrowd": 0}))
    out, log, record = tmp_path / "out", tmp_path / "log", tmp_path / "eval.json"
    argv = ["--config-file", DEMO]  # the options, then the overrides
    argv += ["--coco-dataset", "lazy_own_train", data.train_json, data.train_images]
    argv += ["--coco-dataset", "lazy_own_val", data.val_json, data.val_images]
    argv += [*TINY, "model.network.num_classes=3", "dataloader.train.dataset.names=lazy_own_train"]
    argv += ["dataloader.test.dataset.names=lazy_own_val", f"train.output_dir={out}"]
    assert _run(argv, log, record) == 0, log.read_text()[-3000:]
    seen = json.loads(record.read_text())
    assert seen["gt"] == [1, 2, 3, 4]  # the NaN box left the evaluator's ground truth
    assert set(seen["results"]["bbox"]) >= {"AP", "AP50", "AP-disc", "AP-block", "AP-bar"}
    assert load_checkpoint_file(str(out / "model_final.pth"))["iteration"] == 1
    (published,) = out.glob("model_final-*.pth")
    meta = torch.load(published, weights_only=True)["meta"]
    assert meta["datasets"] == {"train": ["lazy_own_train"], "test": ["lazy_own_val"]}
    assert meta["classes"] == ["disc", "block", "bar"]


def _bad_weights(out: Path) -> list[str]:
    """``file:tensor`` of every checkpointed weight that is non-finite or above 1e8."""
    bad = []
    for path in out.glob("*.pth"):
        ckpt = load_checkpoint_file(str(path))
        weights = {**ckpt["model"], **ckpt.get("ema", {}).get("state", {})}
        for name, value in weights.items():
            if value.is_floating_point() and not bool(value.abs().le(1e8).all()):
                bad.append(f"{path.name}:{name}")
    return bad


@pytest.mark.parametrize("lr, message", DIVERGENCE_CASES)
def test_diverging_run_stops_with_one_line(tmp_path, single_thread, lr, message):
    out, log = tmp_path / "out", tmp_path / "log"
    argv = ["--config-file", DEMO, *TINY, "train.max_iter=6", "train.checkpointer.period=2"]
    argv += [f"optimizer.lr={lr}", "optimizer.clip_gradients.enabled=False"]
    argv += ["dataloader.test.dataset.names=[]", f"train.output_dir={out}"]
    assert _run(argv, log) == 1
    text = log.read_text()
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("lazyconfig_train_net.py:")]
    assert len(errors) == 1, text[-3000:]
    assert errors[0].startswith("lazyconfig_train_net.py: error: training diverged")
    assert message in errors[0] and re.search(r"\blr [0-9]", errors[0])
    assert errors[0].endswith("no checkpoint was written")
    assert not _bad_weights(out) and not list(out.glob("model_final*.pth"))
