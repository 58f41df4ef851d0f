"""tools/predict.py on the demo configs of both frameworks, and mmdet's own DetInferencer.

Random-weight (seeded, perturbed) checkpoints of each demo config. The tool's results must be
the framework's own canonical inference on the same file: Detectron2's ``DefaultPredictor``
(built from the config with ``MODEL.WEIGHTS``) and mmdet's ``init_detector`` +
``inference_detector``; the drawn image must differ from the input where boxes are drawn. A
folder and a video go through too (frame-numbered results, a decodable output video), reruns
replace only the tool's own files, and bad input gives one line and exit status 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import plugins.d2  # noqa: F401  (first: installs the detectron2._C stand-in when needed)

# isort: split
import cv2
import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope

import plugins.mm  # noqa: F401  (registration, safe checkpoint loading)
from tests.e2e.deploy_helpers import CONFIGS, REPO, load_tool, write_checkpoint

predict_tool = load_tool("predict")
SCORE_THR = 0.3


@pytest.fixture(scope="module", autouse=True)
def _mmdet_scope():
    init_default_scope("mmdet")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """One random-weight checkpoint per demo config; mmengine ones with a runner's meta."""
    from mmengine.logging import HistoryBuffer

    from plugins.data.shapes import SHAPES_CLASSES

    folder = tmp_path_factory.mktemp("predict_ckpts")
    losses = HistoryBuffer()
    for value in (1.0, 0.5):
        losses.update(value)
    out = {}
    for (framework, family), config in CONFIGS.items():
        path = folder / f"{framework}_{family}.pth"
        extra = None
        if framework == "mm":  # what mmengine's runner writes besides the weights
            extra = {
                "meta": {"dataset_meta": {"classes": SHAPES_CLASSES}, "epoch": 1},
                "message_hub": {"log_scalars": {"train/loss": losses}},
            }
        write_checkpoint(framework, str(REPO / config), path, seed=11, extra=extra)
        out[(framework, family)] = path
    return out


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    from plugins.data.shapes import ensure_shapes_dataset

    return sorted(Path(ensure_shapes_dataset().val_images).glob("*.jpg"))[0]


def _canonical(framework: str, config: str, checkpoint: Path, image: Path):
    """The framework's own predictor API on ``image``: boxes, scores, labels (numpy)."""
    bgr = cv2.imread(str(image))
    with torch.no_grad():
        if framework == "d2":
            from detectron2.engine import DefaultPredictor

            cfg = load_tool("train_net").load_config(
                config, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(checkpoint)]
            )
            inst = DefaultPredictor(cfg)(bgr)["instances"]
            return inst.pred_boxes.tensor.numpy(), inst.scores.numpy(), inst.pred_classes.numpy()
        from mmdet.apis import inference_detector, init_detector

        model = init_detector(config, str(checkpoint), device="cpu")
        pred = inference_detector(model, bgr).pred_instances
        return pred.bboxes.numpy(), pred.scores.numpy(), pred.labels.numpy()


@pytest.mark.parametrize("case", list(CONFIGS), ids=lambda c: f"{c[0]}-{c[1]}")
def test_predict_image_equals_framework_inference(
    case, checkpoints, image, tmp_path, single_thread
):
    framework, _ = case
    config = str(REPO / CONFIGS[case])
    out = tmp_path / "out"
    argv = [config, str(checkpoints[case]), str(image), "-o", str(out)]
    assert predict_tool.main(argv + ["--score-thr", str(SCORE_THR)]) == 0
    results = json.loads((out / "predictions.json").read_text())
    drawn = cv2.imread(str(out / f"{image.stem}_pred.jpg"))
    original = cv2.imread(str(image))
    assert drawn.shape == original.shape

    boxes, scores, labels = _canonical(framework, config, checkpoints[case], image)
    keep = scores >= SCORE_THR
    assert len(results) == int(keep.sum()) > 0
    got = sorted((r["score"], r["category_id"], *r["bbox"]) for r in results)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
    want = sorted(
        (round(float(s), 5), int(c) + 1, *(round(float(v), 3) for v in b))
        for s, c, b in zip(scores[keep], labels[keep], xywh[keep])
    )  # Shapes ids are label + 1
    np.testing.assert_allclose(np.array(got), np.array(want), atol=2e-3)
    assert {r["image_id"] for r in results} == {0} and results[0]["file_name"] == image.name
    # the visualiser drew the boxes: pixels changed along the best box
    x, y, w, h = max(results, key=lambda r: r["score"])["bbox"]
    x0, y0 = int(np.clip(x, 0, drawn.shape[1] - 1)), int(np.clip(y, 0, drawn.shape[0] - 1))
    ring = (slice(y0, y0 + 3), slice(x0, int(np.clip(x + w, x0 + 1, drawn.shape[1]))))
    assert np.abs(drawn[ring].astype(int) - original[ring].astype(int)).max() > 40


def test_folder_video_and_reruns(checkpoints, image, tmp_path, single_thread):
    case = ("mm", "cornernet")
    config, ckpt = str(REPO / CONFIGS[case]), str(checkpoints[case])
    folder = tmp_path / "images"
    folder.mkdir()
    val = sorted(image.parent.glob("*.jpg"))[:3]
    for path in val:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "notes.txt").write_text("not an image")  # ignored
    out = tmp_path / "out"
    assert predict_tool.main([config, ckpt, str(folder), "-o", str(out), "--score-thr", "0.2"]) == 0
    results = json.loads((out / "predictions.json").read_text())
    assert {r["image_id"] for r in results} <= {0, 1, 2} and results
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{p.stem}_pred.jpg" for p in val] + ["predictions.json", ".predict_manifest.json"]
    )
    # a rerun into the same folder replaces the tool's own files
    assert predict_tool.main([config, ckpt, str(folder), "-o", str(out)]) == 0

    video = tmp_path / "clip.mp4"
    frames = [cv2.imread(str(p)) for p in val]
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (w, h))
    for frame in frames:
        writer.write(cv2.resize(frame, (w, h)))
    writer.release()
    assert predict_tool.main([config, ckpt, str(video), "-o", str(out), "--score-thr", "0.2"]) == 0
    results = json.loads((out / "predictions.json").read_text())
    assert {r["image_id"] for r in results} <= {0, 1, 2} and results
    assert results[0]["file_name"].startswith("clip.mp4#")
    capture = cv2.VideoCapture(str(out / "clip_pred.mp4"))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    assert count == 3
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def _fails(argv, capsys) -> str:
    assert predict_tool.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("predict.py: error: "), err
    return err


def test_bad_input(checkpoints, image, tmp_path, capsys):
    config = str(REPO / CONFIGS[("d2", "cornernet")])
    ckpt = str(checkpoints[("d2", "cornernet")])
    out = tmp_path / "out"

    bad_config = tmp_path / "model.json"
    bad_config.write_text("{}")
    err = _fails([str(bad_config), ckpt, str(image), "-o", str(out)], capsys)
    assert "unknown config type '.json'" in err

    other = str(checkpoints[("mm", "retinanet")])
    err = _fails([config, other, str(image), "-o", str(out)], capsys)
    assert "does not fit" in err

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    err = _fails([config, ckpt, str(broken), "-o", str(out)], capsys)
    assert f"cannot read image {broken}" in err

    clip = tmp_path / "broken.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage")
    err = _fails([config, ckpt, str(clip), "-o", str(out)], capsys)
    assert f"cannot read video {clip}" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    err = _fails([config, ckpt, str(empty), "-o", str(out)], capsys)
    assert "holds no images" in err

    err = _fails([config, ckpt, str(tmp_path / "missing.jpg"), "-o", str(out)], capsys)
    assert "does not exist" in err
    assert not out.exists() or not [p for p in out.iterdir()]  # nothing half-written


def test_foreign_file_is_not_replaced(checkpoints, image, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json").write_text("the user's own results")
    case = ("mm", "cornernet")
    argv = [str(REPO / CONFIGS[case]), str(checkpoints[case]), str(image), "-o", str(out)]
    err = _fails(argv, capsys)
    assert "exists and was not written by predict.py" in err
    assert (out / "predictions.json").read_text() == "the user's own results"
    assert sorted(p.name for p in out.iterdir()) == ["predictions.json"]


def test_mmdet_det_inferencer_with_our_config_and_checkpoint(checkpoints, image, tmp_path):
    """mmdet's own high-level API loads our config (custom_imports) and a runner-style
    checkpoint (message hub with HistoryBuffer: read through the safe loader's allow-list)."""
    from mmdet.apis import DetInferencer

    case = ("mm", "efficientdet")
    inferencer = DetInferencer(
        model=str(REPO / CONFIGS[case]),
        weights=str(checkpoints[case]),
        device="cpu",
        show_progress=False,
    )
    result = inferencer(str(image), out_dir=str(tmp_path), pred_score_thr=SCORE_THR)
    pred = result["predictions"][0]
    assert len(pred["scores"]) > 0 and max(pred["labels"]) < 6
    assert inferencer.model.dataset_meta["classes"][0] == "circle"
    assert list((tmp_path / "vis").glob("*.jpg"))
