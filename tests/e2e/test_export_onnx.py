"""ONNX export proof: the exported graphs reproduce the frameworks' own predictions in onnxruntime.

For the demo model of each family (EfficientDet, RetinaNet, CornerNet) in both frameworks, with
random (seeded, perturbed) weights saved as a checkpoint: ``tools/export_onnx.py`` exports the
config + checkpoint at 128 px with batch 2; onnxruntime runs the graph on embedded Shapes val
images; the framework's own inference (``model(...)`` / ``model.predict``) runs on the same
pixels with the NMS the graph uses (hard NMS at the config's IoU threshold; the demo configs
ask for Gaussian soft-NMS, which has no ONNX operator). The kept detections must be the same:
same count, labels, scores within 1e-4, boxes within 1e-3 of the image size. A full-size D0
at 512 px is checked the same way (slow: one large export).

Bad input: unknown config type, checkpoints that do not fit the config, a size the model cannot
take, an input of the wrong shape, an existing foreign output file, a failing export (nothing
half-written is left).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import plugins.d2  # noqa: F401  (first: installs the detectron2._C stand-in when needed)

# isort: split
import numpy as np
import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.registry import init_default_scope

import plugins.d2.export as d2_export
import plugins.mm  # noqa: F401  (registration)
import plugins.mm.export as mm_export
from plugins.core.corner_pool import _SCAN, _running_max_by_doubling, corner_pool
from plugins.export import onnx as export_io
from tests.e2e.deploy_helpers import CONFIGS, REPO, load_tool, val_images, write_checkpoint

SIZE = 128
BATCH = 2
NUM_IMAGES = 4
SCORE_ATOL = 1e-4
BOX_ATOL = 1e-3  # of the image size

export_tool = load_tool("export_onnx")


def framework_predict(loaded, images: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """The framework's own inference on ``(N, 3, S, S)`` RGB uint8 inputs (no resizing)."""
    model, size = loaded.model, images.shape[-1]
    out = []
    with torch.no_grad():
        for image in images:
            if loaded.framework == "d2":
                chw = image if loaded.cfg.INPUT.FORMAT == "RGB" else image[::-1]
                inputs = [
                    {"image": torch.from_numpy(chw.copy()).float(), "height": size, "width": size}
                ]
                inst = model(inputs)[0]["instances"]
                boxes, scores, labels = inst.pred_boxes.tensor, inst.scores, inst.pred_classes
            else:
                meta = dict(img_id=0, img_shape=(size, size), ori_shape=(size, size))
                sample = DetDataSample(metainfo=dict(meta, scale_factor=(1.0, 1.0)))
                bgr = torch.from_numpy(image[::-1].copy())  # mmcv loads BGR
                data = model.data_preprocessor(dict(inputs=[bgr], data_samples=[sample]), False)
                pred = model(**data, mode="predict")[0].pred_instances
                boxes, scores, labels = pred.bboxes, pred.scores, pred.labels
            out.append((boxes.numpy(), scores.numpy(), labels.numpy()))
    return out


def onnx_predict(runner, images: np.ndarray, batch: int) -> list[tuple[np.ndarray, ...]]:
    out = []
    for start in range(0, len(images), batch):
        res = runner(images[start : start + batch])
        for i, n in enumerate(res["num_detections"]):
            out.append((res["boxes"][i, :n], res["scores"][i, :n], res["labels"][i, :n]))
    return out


def assert_same_detections(got, want, size: int) -> int:
    """Same detections per image (order free among equal scores); returns how many."""
    total = 0
    for i, (g, w) in enumerate(zip(got, want)):
        try:
            total += export_io.match_detections(g, w, BOX_ATOL * size, SCORE_ATOL)
        except AssertionError as e:
            raise AssertionError(f"image {i}: ONNX vs torch: {e}") from None
    return total


# ------------------------------------------------------------------------------------------
# The proof
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _mmdet_scope():
    init_default_scope("mmdet")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return val_images(SIZE, NUM_IMAGES)


@pytest.fixture(scope="module", params=list(CONFIGS), ids=lambda c: f"{c[0]}-{c[1]}")
def exported(request, tmp_path_factory, single_thread):
    framework, family = request.param
    folder = tmp_path_factory.mktemp(f"{framework}_{family}")
    config = str(REPO / CONFIGS[request.param])
    checkpoint = folder / "model.pth"
    write_checkpoint(framework, config, checkpoint, seed=7)
    output = folder / "model.onnx"
    argv = [config, str(checkpoint), "--output", str(output), "--size", str(SIZE)]
    assert export_tool.main(argv + ["--batch", str(BATCH)]) == 0
    loaded = export_tool.load_model(config, str(checkpoint))
    (d2_export if framework == "d2" else mm_export).hard_nms_twin(loaded.model)
    return loaded, output, export_io.OnnxDetector(output, threads=1)


def test_onnx_matches_framework_predict(exported, images):
    loaded, _, runner = exported
    got = onnx_predict(runner, images, BATCH)
    want = framework_predict(loaded, images)
    assert assert_same_detections(got, want, SIZE) >= 10, "too few detections to compare"


def test_metadata_states_versions_and_settings(exported):
    loaded, path, runner = exported
    meta = runner.metadata
    assert meta["producer"] == export_io.PRODUCER and meta["opset"] == str(export_io.OPSET)
    assert set(json.loads(meta["versions"])) == {"torch", "onnx", "onnxscript", "onnxruntime"}
    assert json.loads(meta["input_size"]) == [SIZE, SIZE] and meta["batch"] == str(BATCH)
    assert json.loads(meta["class_names"]) == list(loaded.class_names) and loaded.class_names
    assert meta["family"] == loaded.family and meta["model_nms"] == "gaussian"
    import onnx

    model = onnx.load(str(path))
    assert any(
        op.domain in ("", "ai.onnx") and op.version == export_io.OPSET for op in model.opset_import
    )
    assert sum(node.op_type == "NonMaxSuppression" for node in model.graph.node) == 1


@pytest.mark.slow
def test_efficientdet_d0_512_matches(tmp_path, single_thread):
    """Full-size EfficientDet-D0 (90 classes, 512 px, random weights) through Detectron2."""
    config = str(REPO / "configs" / "efficientdet_d0.yaml")
    checkpoint, output = tmp_path / "d0.pth", tmp_path / "d0.onnx"
    write_checkpoint("d2", config, checkpoint, seed=3, calibrate_size=512)
    argv = [config, str(checkpoint), "--output", str(output), "--size", "512"]
    assert export_tool.main(argv) == 0
    loaded = export_tool.load_model(config, str(checkpoint))
    d2_export.hard_nms_twin(loaded.model)
    images = val_images(512, 2)
    runner = export_io.OnnxDetector(output, threads=1)
    got, want = onnx_predict(runner, images, 1), framework_predict(loaded, images)
    assert assert_same_detections(got, want, 512) >= 10


# ------------------------------------------------------------------------------------------
# Pieces
# ------------------------------------------------------------------------------------------
def test_corner_pool_export_path_equals_scan():
    x = torch.randn(2, 3, 9, 17, generator=torch.Generator().manual_seed(0))
    x[0, 1, 4, 5] = float("nan")
    for direction, (axis, reverse) in _SCAN.items():
        got = _running_max_by_doubling(x, 3 if axis == "w" else 2, reverse)
        want = corner_pool(x, direction)
        assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0)), direction


def test_wrong_input_shape_is_one_clear_line(exported):
    runner = exported[2]
    with pytest.raises(ValueError, match=r"images: the graph takes uint8 \(2, 3, 128, 128\)"):
        runner(np.zeros((1, 3, 100, 100), np.uint8))


# ------------------------------------------------------------------------------------------
# Bad input of the tool
# ------------------------------------------------------------------------------------------
def _run_tool(argv, capsys) -> str:
    assert export_tool.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("export_onnx.py: error: ")
    return err


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpts")
    d2, mm = folder / "d2.pth", folder / "mm.pth"
    write_checkpoint("d2", str(REPO / CONFIGS[("d2", "cornernet")]), d2, seed=1)
    write_checkpoint("mm", str(REPO / CONFIGS[("mm", "retinanet")]), mm, seed=1)
    return d2, mm


def test_unknown_config_type(tmp_path, capsys, checkpoints):
    config = tmp_path / "model.cfg"
    config.write_text("MODEL: {}\n")
    err = _run_tool([str(config), str(checkpoints[0]), "-o", str(tmp_path / "m.onnx")], capsys)
    assert "unknown config type '.cfg'" in err
    assert not (tmp_path / "m.onnx").exists()


def test_checkpoint_of_another_model(tmp_path, capsys, checkpoints):
    config = str(REPO / CONFIGS[("d2", "cornernet")])
    err = _run_tool([config, str(checkpoints[1]), "-o", str(tmp_path / "m.onnx")], capsys)
    assert "does not fit the model" in err and str(checkpoints[1]) in err
    assert not (tmp_path / "m.onnx").exists()


def test_checkpoint_that_fits_only_in_part(tmp_path, capsys, checkpoints):
    state = torch.load(checkpoints[0], weights_only=True)["model"]
    head = [k for k in state if k.startswith("head.net.") and state[k].dim() == 4][-1]
    state[head] = torch.zeros(state[head].shape[0] + 1, *state[head].shape[1:])
    bad = tmp_path / "partial.pth"
    torch.save({"model": state}, bad)
    config = str(REPO / CONFIGS[("d2", "cornernet")])
    err = _run_tool([config, str(bad), "-o", str(tmp_path / "m.onnx")], capsys)
    assert "does not fit the config's model" in err and "skipped for shape" in err


def test_size_the_model_cannot_take(tmp_path, capsys, checkpoints):
    config = str(REPO / CONFIGS[("d2", "cornernet")])
    argv = [config, str(checkpoints[0]), "-o", str(tmp_path / "m.onnx"), "--size", "100"]
    err = _run_tool(argv, capsys)
    assert "size: 100x100 is not a positive multiple of 32" in err
    assert list(tmp_path.iterdir()) == []


def test_foreign_output_is_not_overwritten(tmp_path, capsys, checkpoints):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"the user's own file")
    config = str(REPO / CONFIGS[("d2", "cornernet")])
    err = _run_tool([config, str(checkpoints[0]), "-o", str(target)], capsys)
    assert "exists and was not written by this tool" in err
    assert target.read_bytes() == b"the user's own file"


class _BrokenProgram:
    """Stands in for the exporter's result: saves a file onnxruntime cannot load."""

    class model:  # noqa: N801
        metadata_props: dict = {}

    @staticmethod
    def save(path, external_data=False):
        Path(path).write_bytes(b"not an onnx graph")


def test_failed_export_leaves_nothing(tmp_path, capsys, checkpoints, monkeypatch):
    """The graph fails the onnxruntime check after it was written: the temporary file is
    removed and the target never appears."""
    written = []

    def fake_export(*args, **kwargs):
        written.append(1)
        return _BrokenProgram()

    monkeypatch.setattr(export_io.torch.onnx, "export", fake_export)
    config = str(REPO / CONFIGS[("d2", "cornernet")])
    err = _run_tool([config, str(checkpoints[0]), "-o", str(tmp_path / "m.onnx")], capsys)
    assert written and "onnxruntime cannot run the exported graph" in err
    assert list(tmp_path.iterdir()) == []


def test_is_our_onnx(exported, tmp_path):
    path = exported[1]
    assert export_tool.is_our_onnx(path)
    other = tmp_path / "x.onnx"
    other.write_bytes(b"\x08\x07")
    assert not export_tool.is_our_onnx(other)


def test_export_package_imports_no_framework():
    """plugins.export is framework-free: no Detectron2 / OpenMMLab import anywhere in it, not
    even inside functions (the adapters live in plugins.d2 / plugins.mm)."""
    frameworks = {"detectron2", "mmdet", "mmcv", "mmengine"}
    for path in (REPO / "plugins" / "export").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & frameworks, (path.name, names)
