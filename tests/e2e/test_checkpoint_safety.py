"""Checkpoints never run code, and weights of another model are an error (issue #10, items 1-2).

A crafted payload file writes a marker when it is unpickled; every path that reads a
checkpoint (our tools, Detectron2's checkpointer and predictor, mmengine / mmdet's own loading
and tools) must refuse it with one line, and the marker must never appear.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import plugins.d2  # noqa: F401  (installs the safe DetectionCheckpointer)
import plugins.mm  # noqa: F401  (installs mmengine's safe readers)
from plugins.convert.match import WrongCheckpointError, describe_checkpoint, match_weights
from plugins.safe_load import (
    CheckpointRefusedError,
    CheckpointUnreadableError,
    load_checkpoint_file,
    save_checkpoint_file,
)

REPO = Path(__file__).resolve().parents[2]
D2_DEMO = REPO / "configs" / "demo" / "efficientdet_shapes.yaml"
D2_CORNERNET = REPO / "configs" / "demo" / "cornernet_shapes.yaml"
MM_DEMO = REPO / "configs" / "mmdet" / "demo" / "efficientdet_shapes.py"
MM_CORNERNET = REPO / "configs" / "mmdet" / "demo" / "cornernet_shapes.py"

pytestmark = pytest.mark.usefixtures("single_thread")


class _Payload:
    """Unpickling this creates the marker file (harmless stand-in for any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture(scope="module")
def payloads(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("payloads")
    marker = folder / "MARKER"
    weights = {"w": torch.zeros(2)}
    files = {
        "pth": folder / "evil.pth",
        "legacy": folder / "evil_legacy.pth",
        "pkl": folder / "evil.pkl",
        "d2": folder / "evil_d2.pth",
    }
    torch.save({"state_dict": weights, "meta": {"x": _Payload(marker)}}, files["pth"])
    torch.save(
        {"state_dict": weights, "x": _Payload(marker)},
        files["legacy"],
        _use_new_zipfile_serialization=False,
    )
    with open(files["pkl"], "wb") as f:
        pickle.dump({"model": {"w": torch.zeros(2).numpy()}, "x": _Payload(marker)}, f)
    torch.save({"model": weights, "iteration": _Payload(marker)}, files["d2"])
    files["marker"] = marker
    return files


@pytest.fixture(autouse=True)
def no_marker(payloads):
    """After every test: the payload never ran."""
    yield
    assert not payloads["marker"].exists(), "a checkpoint path unpickled the payload"


def test_premise_the_payload_runs_under_plain_pickle(payloads, tmp_path):
    marker = tmp_path / "PREMISE"
    with open(tmp_path / "p.pkl", "wb") as f:
        pickle.dump(_Payload(marker), f)
    with open(tmp_path / "p.pkl", "rb") as f:
        pickle.load(f)  # noqa: S301  (our own file: shows the payload is real)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["pth", "legacy", "pkl", "d2"])
def test_safe_loader_refuses_every_format(payloads, kind):
    with pytest.raises(
        CheckpointRefusedError, match=r"refused to load .*: it needs (getattr|pathlib)"
    ):
        load_checkpoint_file(payloads[kind])


def test_safe_loader_reads_numpy_and_plain_types(tmp_path):
    import numpy as np

    path = tmp_path / "ok.pth"
    value = {"a": np.arange(3), "s": np.float64(1.5), "t": torch.ones(2), "l": [1, (2, "x")]}
    torch.save(value, path)
    loaded = load_checkpoint_file(path)
    assert loaded["a"].tolist() == [0, 1, 2] and loaded["s"] == 1.5 and loaded["l"] == [1, (2, "x")]
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointUnreadableError, match="bad.pth"):
        load_checkpoint_file(tmp_path / "bad.pth")


def test_save_never_clobbers(tmp_path):
    path = tmp_path / "out.pth"
    path.write_text("user file")
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_checkpoint_file({"a": torch.ones(1)}, path)
    assert path.read_text() == "user file"
    with pytest.raises(FileExistsError, match="is the input"):
        save_checkpoint_file({"a": torch.ones(1)}, path, overwrite=True, inputs=[path])
    save_checkpoint_file({"a": torch.ones(1)}, path, overwrite=True)
    assert torch.equal(load_checkpoint_file(path)["a"], torch.ones(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pth"]


# ------------------------------------------------------------------------------- Detectron2


def _d2_cfg(config: Path, *opts: str):
    sys.path.insert(0, str(REPO / "tools"))
    from train_net import load_config

    return load_config(str(config), ["MODEL.DEVICE", "cpu", *opts])


@pytest.fixture(scope="module")
def d2_models():
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    effdet = build_model(_d2_cfg(D2_DEMO))
    cornernet = build_model(_d2_cfg(D2_CORNERNET))
    return effdet, cornernet


@pytest.mark.parametrize("kind", ["pth", "pkl", "d2", "legacy"])
def test_detectron2_checkpointer_refuses_payload(payloads, d2_models, kind):
    from detectron2.checkpoint import DetectionCheckpointer

    with pytest.raises(CheckpointRefusedError, match="refused to load"):
        DetectionCheckpointer(d2_models[0]).load(str(payloads[kind]))


def test_detectron2_eval_only_and_predictor_refuse_payload(payloads, d2_models):
    from detectron2.engine import DefaultPredictor

    from plugins.d2.engine import CheckpointLoadError, load_checkpoint

    cfg = _d2_cfg(D2_DEMO, "MODEL.WEIGHTS", str(payloads["pkl"]))
    with pytest.raises(CheckpointLoadError, match="refused to load"):
        load_checkpoint(cfg, d2_models[0], str(payloads["d2"]))
    with pytest.raises(CheckpointRefusedError):
        DefaultPredictor(cfg)


def test_detectron2_resume_refuses_payload(payloads, tmp_path):
    """train_net.py --resume reads OUTPUT_DIR/last_checkpoint: one line, exit status 1.

    ``run()`` goes in a forked child: Detectron2's loggers it sets up stay out of pytest's.
    """
    from tests.forked import run_forked
    from tests.mm.test_tools import _load_tool

    train_net = _load_tool("train_net")
    out = tmp_path / "out"
    out.mkdir()
    (out / "last_checkpoint").write_text(str(payloads["d2"]))
    argv = ["--config-file", str(D2_DEMO), "--resume", "OUTPUT_DIR", str(out)]
    argv += ["SOLVER.MAX_ITER", "1", "MODEL.EFFICIENTDET.VARIANT", "efficientdet_test"]
    status = run_forked(lambda: train_net.run(argv), tmp_path / "log")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
    log = (tmp_path / "log").read_text()
    assert "train_net.py: error: bad checkpoint: refused to load" in log


def test_detectron2_wrong_model_is_an_error(d2_models, tmp_path):
    from plugins.d2.engine import CheckpointLoadError, load_checkpoint

    effdet, cornernet = d2_models
    path = tmp_path / "cornernet.pth"
    torch.save({"model": cornernet.state_dict()}, path)
    with pytest.raises(
        CheckpointLoadError, match=r"CornerNet checkpoint of Detectron2.*EfficientDet"
    ):
        load_checkpoint(_d2_cfg(D2_DEMO), effdet, str(path))


def test_detectron2_partial_loads_stay_possible(d2_models, tmp_path, caplog):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    effdet = d2_models[0]
    backbone_only = {k: v for k, v in effdet.state_dict().items() if k.startswith("backbone.body.")}
    torch.save({"model": backbone_only}, tmp_path / "backbone.pth")
    other_classes = build_model(_d2_cfg(D2_DEMO, "MODEL.EFFICIENTDET.NUM_CLASSES", "3"))
    torch.save({"model": other_classes.state_dict()}, tmp_path / "classes3.pth")
    model = build_model(_d2_cfg(D2_DEMO))
    with caplog.at_level("INFO", logger="plugins.d2.checkpoint"):
        DetectionCheckpointer(model).load(str(tmp_path / "backbone.pth"))
        for name, value in backbone_only.items():
            assert torch.equal(model.state_dict()[name], value)
        DetectionCheckpointer(model).load(str(tmp_path / "classes3.pth"))
    head = "head.box_net.predict.pw.weight"
    assert torch.equal(model.state_dict()[head], other_classes.state_dict()[head])
    lines = [r.getMessage() for r in caplog.records if "Partial load" in r.getMessage()]
    assert len(lines) == 2
    assert "not in the file" in lines[0] and "skipped for shape" in lines[1]


# ------------------------------------------------------------------------------- MMDetection


def _mm_tool(name: str):
    sys.path.insert(0, str(REPO / "tools"))
    return __import__(name)


def test_mm_tools_refuse_payload(payloads):
    mm_train, mm_test = _mm_tool("mm_train"), _mm_tool("mm_test")
    for argv in (
        [str(MM_DEMO), "--cfg-options", f"load_from={payloads['pth']}"],
        [str(MM_DEMO), "--resume", str(payloads["legacy"])],
    ):
        with pytest.raises(mm_train.ConfigProblem, match="refused to load"):
            mm_train.build_train_config(mm_train.parse_args(argv))
    with pytest.raises(mm_train.ConfigProblem, match="refused to load"):
        mm_test.build_test_config(mm_test.parse_args([str(MM_DEMO), str(payloads["pth"])]))


@pytest.fixture(scope="module")
def mm_models():
    from mmdet.apis import init_detector

    torch.manual_seed(0)
    return init_detector(str(MM_DEMO), device="cpu"), init_detector(str(MM_CORNERNET), device="cpu")


def test_mmengine_and_mmdet_apis_refuse_payload(payloads, mm_models):
    from mmdet.apis import DetInferencer, init_detector
    from mmengine.runner import load_checkpoint

    with pytest.raises(CheckpointRefusedError):
        load_checkpoint(mm_models[0], str(payloads["pth"]), map_location="cpu")
    with pytest.raises(CheckpointRefusedError):
        init_detector(str(MM_DEMO), str(payloads["legacy"]), device="cpu")
    with pytest.raises(CheckpointRefusedError):
        DetInferencer(model=str(MM_DEMO), weights=str(payloads["pth"]), device="cpu")


def test_mmdet_own_test_tool_refuses_payload(payloads, tmp_path):
    import mmdet

    tool = Path(mmdet.__file__).parent / ".mim" / "tools" / "test.py"
    proc = subprocess.run(
        [sys.executable, str(tool), str(MM_DEMO), str(payloads["pth"])]
        + ["--work-dir", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "refused to load" in proc.stderr


def test_mmdet_loads_our_checkpoints_safely(mm_models, tmp_path):
    """A real mmengine checkpoint (message hub, optimizer, ...) loads under weights_only."""
    from mmdet.apis import DetInferencer, init_detector
    from mmengine.logging import HistoryBuffer

    effdet = mm_models[0]
    buffer = HistoryBuffer()
    buffer.update(0.5)
    ckpt = {
        "meta": {"epoch": 1, "iter": 2, "cfg": "x = 1", "dataset_meta": {"classes": ("a",)}},
        "state_dict": effdet.state_dict(),
        "message_hub": {"log_scalars": {"train/loss": buffer}, "runtime_info": {"iter": 2}},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
    }
    torch.save(ckpt, tmp_path / "epoch_1.pth")
    model = init_detector(str(MM_DEMO), str(tmp_path / "epoch_1.pth"), device="cpu")
    for name, value in effdet.state_dict().items():
        assert torch.equal(model.state_dict()[name], value)
    DetInferencer(model=str(MM_DEMO), weights=str(tmp_path / "epoch_1.pth"), device="cpu")


def test_mm_wrong_model_is_an_error(mm_models, tmp_path):
    from mmdet.apis import init_detector

    path = tmp_path / "cornernet.pth"
    torch.save({"state_dict": mm_models[1].state_dict()}, path)
    with pytest.raises(WrongCheckpointError, match=r"CornerNet checkpoint of MMDetection"):
        init_detector(str(MM_DEMO), str(path), device="cpu")


def test_mm_test_tool_stops_on_wrong_model(mm_models, tmp_path):
    """mm_test.py (in a forked child: mmengine's runner loggers stay out of pytest's)."""
    from tests.forked import run_forked

    path = tmp_path / "cornernet.pth"
    torch.save({"state_dict": mm_models[1].state_dict()}, path)
    mm_test = _mm_tool("mm_test")
    argv = [str(MM_DEMO), str(path), "--work-dir", str(tmp_path / "work")]

    status = run_forked(lambda: mm_test.main(argv), tmp_path / "log")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 2
    log = (tmp_path / "log").read_text()
    assert "mm_test: error:" in log and "does not fit the model" in log


def test_d2_file_in_mm_names_the_converter(d2_models, mm_models, tmp_path):
    from mmengine.runner import load_checkpoint

    path = tmp_path / "d2_cornernet.pth"
    torch.save({"model": d2_models[1].state_dict()}, path)
    with pytest.raises(WrongCheckpointError, match=r"convert_checkpoint.py FILE OUT.pth --to mm"):
        load_checkpoint(mm_models[0], str(path), map_location="cpu")


# ------------------------------------------------------------------------------- converters


def test_converters_refuse_payload(payloads, tmp_path):
    convert_checkpoint = _mm_tool("convert_checkpoint")
    convert_effdet = _mm_tool("convert_effdet")
    out = tmp_path / "out.pth"
    assert convert_checkpoint.main([str(payloads["pth"]), str(out)]) == 2
    with pytest.raises(SystemExit, match="refused to load"):
        convert_effdet.main(["--variant", "efficientdet_d0", str(payloads["pkl"]), str(out)])
    assert not out.exists()


# ------------------------------------------------------------------------------- matching


def test_match_rules():
    model = {"a": (2,), "b": (3,), "c": (4, 4), "d": (1,)}
    assert match_weights(model, dict(model)).is_complete
    backbone = match_weights(model, {"a": (2,)})
    assert backbone.model_fraction == 0.25 and backbone.file_fraction == 1.0
    assert not backbone.is_wrong_model
    other = match_weights(model, {"x": (2,), "y": (3,), "a": (5,)})
    assert other.is_wrong_model and other.wrong_shape == ("a",) and other.loaded == 0
    assert describe_checkpoint(["backbone.body.x", "head.net.y"])[1] == "d2"
    assert describe_checkpoint(["foo"])[1] is None
