"""Published (model-zoo style) Detectron2 checkpoints: written at the end of training and by
``tools/publish_model.py``, loaded as is by ``DetectionCheckpointer`` / ``DefaultPredictor``,
and reproducing the AP the training reported through ``tools/train_net.py --eval-only``."""

from __future__ import annotations

import plugins.d2  # noqa: F401  (first: detectron2._C stand-in)

# isort: split
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from PIL import Image

from plugins.d2.engine import Trainer, load_checkpoint
from plugins.data.shapes import SHAPES_CLASSES, ensure_shapes_dataset
from plugins.publish import check_published_name, metrics_from_json_log
from plugins.safe_load import load_checkpoint_file
from tests.zoo_checks import assert_plain, import_tool, same_results

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "demo" / "efficientdet_shapes.yaml")

# the tiny variant at 128 px, 2 images per batch, every candidate kept, EMA on (the demo's)
TINY = {
    "MODEL.EFFICIENTDET.VARIANT": "efficientdet_test",
    "MODEL.EFFICIENTDET.SCORE_THRESH_TEST": "0.0",
    "MODEL.EFFICIENTDET.TOPK_CANDIDATES_TEST": "50",
    "INPUT.SCALE_JITTER.SIZE": "128",
    "INPUT.MIN_SIZE_TEST": "128",
    "INPUT.MAX_SIZE_TEST": "128",
    "SOLVER.IMS_PER_BATCH": "2",
    "SOLVER.WARMUP_ITERS": "1",
    "SOLVER.MAX_ITER": "3",
    "SEED": "3",
}
OPTS = [x for pair in TINY.items() for x in pair]


def _run_train_net(monkeypatch, argv: list[str]) -> list[dict]:
    """tools/train_net.py in this process; every result ``Trainer.test`` returned."""
    seen: list[dict] = []
    real = Trainer.test.__func__

    def test(cls, cfg, model, evaluators=None):
        seen.append(real(cls, cfg, model, evaluators))
        return seen[-1]

    monkeypatch.setattr(Trainer, "test", classmethod(test))
    assert import_tool("train_net").run(argv) == 0
    monkeypatch.undo()
    return seen


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("d2_publish")
    with pytest.MonkeyPatch.context() as mp:
        results = _run_train_net(mp, ["--config-file", DEMO, *OPTS, "OUTPUT_DIR", str(out)])
    assert len(results) == 1  # the final evaluation (TEST.EVAL_PERIOD 0)
    published = sorted(out.glob("model_final-*.pth"))
    assert len(published) == 1, sorted(os.listdir(out))
    return out, published[0], results[0]


def test_training_publishes_the_evaluated_ema_weights(trained):
    out, published, reported = trained
    sha = check_published_name(published)
    assert published.name == f"model_final-{sha[:8]}.pth"
    ckpt = torch.load(published, map_location="cpu", weights_only=True)  # no allow-list needed
    assert set(ckpt) == {"model", "meta"}  # no trainer / optimizer / scheduler / ema / iteration
    assert set(load_checkpoint_file(published)) == {"model", "meta"}
    final = load_checkpoint_file(out / "model_final.pth")
    assert set(ckpt["model"]) == set(final["ema"]["state"])
    for key, value in ckpt["model"].items():
        assert torch.equal(value, final["ema"]["state"][key]), key
    assert any(not torch.equal(v, final["model"][k]) for k, v in ckpt["model"].items())
    meta = ckpt["meta"]
    assert_plain(meta)
    assert meta["framework"] == "detectron2" and meta["architecture"] == "EfficientDet"
    assert meta["iteration"] == final["iteration"] == 2
    assert meta["ema"] == {"applied": True, "decay": 0.995, "num_updates": 3}
    assert meta["classes"] == list(SHAPES_CLASSES)
    assert "efficientdet_test" in meta["config"] and "PUBLISH" in meta["config"]
    assert {"torch", "detectron2", "plugins", "python"} <= set(meta["versions"])
    assert same_results(meta["metrics"], json.loads(json.dumps(reported)))
    # what metrics.json recorded after the last iteration
    logged = metrics_from_json_log(out / "metrics.json", "iteration", 3, nested=True)
    assert same_results(logged, meta["metrics"])


def test_eval_only_on_the_published_file_reproduces_the_ap(trained, monkeypatch, tmp_path):
    _, published, reported = trained
    assert reported["bbox"]["AP50"] > 0  # something to reproduce
    args = ["--config-file", DEMO, "--eval-only", *OPTS, "MODEL.WEIGHTS", str(published)]
    results = _run_train_net(monkeypatch, [*args, "OUTPUT_DIR", str(tmp_path)])
    assert len(results) == 1 and same_results(dict(results[0]), dict(reported))


def _cfg(weights: str):
    cfg = import_tool("train_net").load_config(DEMO, [*OPTS, "MODEL.WEIGHTS", weights])
    return cfg


def test_detectron2_loaders_use_it_as_is(trained):
    out, published, _ = trained
    cfg = _cfg(str(published))
    torch.manual_seed(123)  # other initial weights than the trained model's
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(str(published))
    state = torch.load(published, weights_only=True)["model"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    image_path = sorted(Path(ensure_shapes_dataset().val_images).glob("*"))[0]
    rgb = np.asarray(Image.open(image_path).convert("RGB"))
    predictor = DefaultPredictor(cfg)  # MODEL.WEIGHTS = the published file
    got = predictor(rgb[:, :, ::-1] if predictor.input_format == "BGR" else rgb)["instances"]
    # the evaluation path of training: model_final.pth with its EMA weights swapped in
    reference = Trainer.build_model(cfg)
    assert load_checkpoint(cfg, reference, str(out / "model_final.pth"))
    reference.eval()
    predictor.model = reference
    want = predictor(rgb[:, :, ::-1] if predictor.input_format == "BGR" else rgb)["instances"]
    assert len(got) > 0
    assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor)
    assert torch.equal(got.scores, want.scores)
    assert MetadataCatalog.get("shapes_val").thing_classes == list(SHAPES_CLASSES)


def test_publish_tool_matches_the_end_of_training_file(trained, tmp_path, capsys):
    out, published, _ = trained
    tool = import_tool("publish_model")
    options = ["--cfg-options", *(f"{k}={v}" for k, v in TINY.items())]
    dest = tmp_path / "zoo" / "tiny_effdet.pth"
    assert tool.main([DEMO, str(out / "model_final.pth"), str(dest), *options]) == 0
    made = sorted(dest.parent.glob("tiny_effdet-*.pth"))
    assert len(made) == 1 and check_published_name(made[0])
    assert str(made[0]) in capsys.readouterr().out
    ours = torch.load(made[0], weights_only=True)
    auto = torch.load(published, weights_only=True)
    assert set(ours) == {"model", "meta"}
    assert all(torch.equal(ours["model"][k], v) for k, v in auto["model"].items())
    assert_plain(ours["meta"])
    assert same_results(ours["meta"]["metrics"], auto["meta"]["metrics"])  # from metrics.json
    assert ours["meta"]["source"] == "model_final.pth" and ours["meta"]["iteration"] == 2
    # --no-ema: the trained weights ("model")
    assert tool.main([DEMO, str(out / "model_final.pth"), str(dest), "--no-ema", *options]) == 0
    raw = [p for p in dest.parent.glob("tiny_effdet-*.pth") if p != made[0]]
    final = load_checkpoint_file(out / "model_final.pth")
    raw_state = torch.load(raw[0], weights_only=True)["model"]
    assert all(torch.equal(v, final["model"][k]) for k, v in raw_state.items())
    # a config whose model the weights do not fit: one line naming the problem, exit 2
    d0 = str(REPO / "configs" / "efficientdet_d0.yaml")
    assert tool.main([d0, str(out / "model_final.pth"), str(dest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not fit the model" in err[0] and "model_final.pth" in err[0]
    assert len(list(dest.parent.iterdir())) == 2  # nothing else written
