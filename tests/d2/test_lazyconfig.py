"""LazyConfigs (configs/lazy/) build the models of their YAML twins and train through
tools/lazyconfig_train_net.py."""

from __future__ import annotations

import plugins.d2  # noqa: F401  (first: detectron2._C stand-in)

# isort: split
import contextlib
import math
from pathlib import Path
from unittest import mock

import pytest
import torch
from detectron2.config import get_cfg, instantiate
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler
from omegaconf import ListConfig

from plugins.d2 import add_plugins_config
from plugins.d2.engine import build_train_augmentations
from plugins.d2.lazy import LazyConfigError, load_lazy_config
from plugins.publish import check_published_name
from plugins.safe_load import load_checkpoint_file
from tests.zoo_checks import import_tool, same_results

REPO = Path(__file__).resolve().parents[2]

TWINS = [
    (f"efficientdet_{v}.yaml", f"efficientdet_{v}.py")
    for v in "d0 d1 d2 d3 d4 d5 d6 d7 d7x".split()
]
TWINS += [
    ("retinanet_R_50_FPN_1x.yaml", "retinanet_R_50_FPN_1x.py"),
    ("retinanet_R_50_FPN_1x_softnms.yaml", "retinanet_R_50_FPN_1x_softnms.py"),
    ("cornernet_hourglass104.yaml", "cornernet_hourglass104.py"),
]
DEMOS = ["efficientdet", "retinanet", "cornernet"]
TWINS += [(f"demo/{d}_shapes.yaml", f"demo/{d}_shapes.py") for d in DEMOS]


@contextlib.contextmanager
def _device(device: str):
    """Build on ``device``; on the meta device skip the weight initialisers (values do not
    exist there, and running them is most of the build time)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.device(device))
        if device == "meta":
            for name in _INITS:
                stack.enter_context(mock.patch.object(torch.nn.init, name, lambda t, *a, **k: t))
        yield


_INITS = ("normal_", "uniform_", "constant_", "zeros_", "ones_", "kaiming_normal_")
_INITS += ("kaiming_uniform_", "xavier_uniform_", "xavier_normal_", "trunc_normal_")


def yaml_model(name: str, device: str = "meta"):
    cfg = _yaml_cfg(name)
    cfg.MODEL.DEVICE = device
    with _device(device):
        return build_model(cfg)


def lazy_model(name: str, device: str = "meta"):
    cfg = load_lazy_config(str(REPO / "configs" / "lazy" / name))
    with _device(device):
        return instantiate(cfg.model)


@pytest.mark.parametrize("yaml_name, lazy_name", TWINS, ids=[t[1] for t in TWINS])
def test_lazy_config_builds_the_yaml_model(yaml_name, lazy_name):
    """Same class, parameter names, shapes and count (on the meta device: no memory)."""
    want, got = yaml_model(yaml_name), lazy_model(lazy_name)
    assert type(got) is type(want)
    want_state, got_state = want.state_dict(), got.state_dict()
    assert list(got_state) == list(want_state)
    assert all(got_state[k].shape == v.shape for k, v in want_state.items())
    count = sum(p.numel() for p in got.parameters())
    assert count == sum(p.numel() for p in want.parameters()) > 0
    assert [n for n, p in got.named_parameters() if not p.requires_grad] == [
        n for n, p in want.named_parameters() if not p.requires_grad
    ]  # same frozen parameters (ResNet stem and res2 of RetinaNet)
    # same settings: every plain attribute (losses, thresholds, NMS, normalisation, ...)
    settings = {k: v for k, v in vars(want).items() if isinstance(v, (bool, int, float, str))}
    assert settings and {k: vars(got).get(k) for k in settings} == settings


def _yaml_cfg(name: str):
    cfg = get_cfg()
    add_plugins_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / name))
    return cfg


def _aug_state(aug) -> tuple:
    """An augmentation's class and parameters (sequences as tuples)."""
    params = {
        k: tuple(v) if isinstance(v, (list, tuple, ListConfig)) else v for k, v in vars(aug).items()
    }
    return type(aug).__name__, params


@pytest.mark.parametrize("yaml_name, lazy_name", TWINS, ids=[t[1] for t in TWINS])
def test_lazy_recipe_matches_the_yaml_solver_and_data(yaml_name, lazy_name):
    """Optimizer, lr schedule, EMA, iterations, checkpoints, datasets and augmentations."""
    y, lazy = _yaml_cfg(yaml_name), load_lazy_config(str(REPO / "configs" / "lazy" / lazy_name))
    solver, train, opt = y.SOLVER, lazy.train, lazy.optimizer
    assert (train.max_iter, train.checkpointer.period) == (
        solver.MAX_ITER,
        solver.CHECKPOINT_PERIOD,
    )
    assert (opt.optimizer, opt.lr, opt.weight_decay) == (
        solver.OPTIMIZER,
        solver.BASE_LR,
        solver.WEIGHT_DECAY,
    )
    assert opt.params.weight_decay_norm == solver.WEIGHT_DECAY_NORM
    if solver.OPTIMIZER == "SGD":
        assert (opt.momentum, opt.nesterov) == (solver.MOMENTUM, solver.NESTEROV)
    clip = solver.CLIP_GRADIENTS
    assert opt.clip_gradients.enabled == clip.ENABLED
    if clip.ENABLED:
        assert (opt.clip_gradients.clip_type, opt.clip_gradients.clip_value) == (
            clip.CLIP_TYPE,
            clip.CLIP_VALUE,
        )
    # the lr multiplier along the run equals the YAML's scheduler
    param = torch.nn.Parameter(torch.zeros(1))
    want = build_lr_scheduler(y, torch.optim.SGD([param], lr=1.0))._multiplier
    got = instantiate(lazy.lr_multiplier)
    for it in sorted({0, 1, solver.WARMUP_ITERS, *solver.STEPS, solver.MAX_ITER // 3}):
        where = min(it, solver.MAX_ITER - 1) / solver.MAX_ITER
        assert math.isclose(got(where), want(where), rel_tol=1e-9, abs_tol=1e-12), it
    ema = y.MODEL.EMA
    assert train.ema.enabled == ema.ENABLED
    if ema.ENABLED:
        assert (train.ema.decay, train.ema.warmup) == (ema.DECAY, ema.WARMUP)
    assert (train.seed, train.init_checkpoint) == (y.SEED, y.MODEL.WEIGHTS)
    guard = {k.upper(): v for k, v in train.divergence_guard.items()}
    assert guard == dict(solver.DIVERGENCE_GUARD)  # same options and values, lower-case keys
    assert (train.device == "cpu") == (y.MODEL.DEVICE == "cpu")
    # data: datasets, batch, empty-image policy, input format, train / test transforms
    loader = lazy.dataloader
    assert [loader.train.dataset.names] == list(y.DATASETS.TRAIN)
    assert [loader.test.dataset.names] == list(y.DATASETS.TEST)
    assert loader.train.total_batch_size == solver.IMS_PER_BATCH
    assert loader.train.dataset.filter_empty == y.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    assert loader.train.num_workers == y.DATALOADER.NUM_WORKERS
    assert loader.train.mapper.image_format == y.INPUT.FORMAT
    assert list(lazy.model.pixel_mean) == list(y.MODEL.PIXEL_MEAN)
    assert list(lazy.model.pixel_std) == list(y.MODEL.PIXEL_STD)
    augs = [_aug_state(a) for a in instantiate(loader.train.mapper.augmentations)]
    assert augs == [_aug_state(a) for a in build_train_augmentations(y)]
    test_resize = loader.test.mapper.augmentations[0]
    assert (test_resize.short_edge_length, test_resize.max_size) == (
        y.INPUT.MIN_SIZE_TEST,
        y.INPUT.MAX_SIZE_TEST,
    )


# thresholds opened up so that untrained models give detections to compare (CornerNet: its
# untrained corner pairs are all rejected, score -1; without soft-NMS they are still listed)
_OPEN = {
    "test_score_thresh": 0.0,
    "score_thresh": -2.0,
    "distance_threshold": 1e9,
    "soft_nms_enabled": False,
}


@pytest.mark.parametrize("demo", DEMOS)
def test_same_seed_same_weights_same_detections(demo, single_thread):
    torch.manual_seed(0)
    want = yaml_model(f"demo/{demo}_shapes.yaml", "cpu").eval()
    torch.manual_seed(0)
    got = lazy_model(f"demo/{demo}_shapes.py", "cpu").eval()
    want_state = want.state_dict()
    for key, value in got.state_dict().items():  # the same initialisation, parameter by parameter
        assert torch.equal(value, want_state[key]), key
    for model in (want, got):
        for attr, value in _OPEN.items():
            if hasattr(model, attr):
                setattr(model, attr, value)
    image = torch.rand(3, 200, 256, generator=torch.Generator().manual_seed(1)) * 255
    inputs = [{"image": image, "height": 100, "width": 128}]
    with torch.no_grad():
        a, b = want(inputs)[0]["instances"], got(inputs)[0]["instances"]
    assert len(a) > 0 and a.image_size == (100, 128)
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)


# the EfficientDet demo with the tiny variant at 128 px, 2 images per batch, every candidate kept
TINY = [
    "model.network.variant.name=efficientdet_test",
    "model.test_score_thresh=0.0",
    "model.test_topk_candidates=50",
    "dataloader.train.mapper.augmentations.1.target_height=128",
    "dataloader.train.mapper.augmentations.1.target_width=128",
    "dataloader.train.mapper.augmentations.2.crop_size=[128,128]",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=128",
    "dataloader.train.total_batch_size=2",
    "train.max_iter=2",
    "train.seed=3",
]
DEMO = str(REPO / "configs" / "lazy" / "demo" / "efficientdet_shapes.py")


def test_two_iterations_through_lazyconfig_train_net(tmp_path, monkeypatch):
    tool = import_tool("lazyconfig_train_net")
    seen: list[dict] = []
    real = tool.do_test
    monkeypatch.setattr(
        tool, "do_test", lambda cfg, model: seen.append(real(cfg, model)) or seen[-1]
    )
    out = tmp_path / "out"
    assert tool.run(["--config-file", DEMO, *TINY, f"train.output_dir={out}"]) == 0
    assert len(seen) == 1 and seen[0]["bbox"]["AP50"] > 0  # the final evaluation, EMA weights
    final = load_checkpoint_file(out / "model_final.pth")
    assert final["iteration"] == 1 and final["ema"]["num_updates"] == 2
    (published,) = out.glob("model_final-*.pth")
    check_published_name(published)
    ckpt = torch.load(published, weights_only=True)
    assert set(ckpt) == {"model", "meta"}
    assert all(torch.equal(v, final["ema"]["state"][k]) for k, v in ckpt["model"].items())
    assert ckpt["meta"]["iteration"] == 1 and "efficientdet_test" in ckpt["meta"]["config"]
    assert same_results(ckpt["meta"]["metrics"], dict(seen[0]))
    # --eval-only on the published file reproduces the AP of the training's evaluation
    args = ["--config-file", DEMO, "--eval-only", *TINY, f"train.init_checkpoint={published}"]
    assert tool.run([*args, f"train.output_dir={tmp_path / 'eval'}"]) == 0
    assert len(seen) == 2 and same_results(dict(seen[1]), dict(seen[0]))
    # tools/publish_model.py with the LazyConfig: the same weights, metrics from metrics.json
    publish = import_tool("publish_model")
    dest = tmp_path / "zoo" / "lazy.pth"
    options = ["--cfg-options", "model.network.variant.name=efficientdet_test"]
    assert publish.main([DEMO, str(out / "model_final.pth"), str(dest), *options]) == 0
    (made,) = dest.parent.glob("lazy-*.pth")
    again = torch.load(made, weights_only=True)
    assert all(torch.equal(again["model"][k], v) for k, v in ckpt["model"].items())
    assert same_results(again["meta"]["metrics"], ckpt["meta"]["metrics"])


def test_bad_config_or_override_is_one_line(tmp_path, capsys):
    tool = import_tool("lazyconfig_train_net")
    assert tool.run(["--config-file", DEMO, "train.max_iters=10"]) == 1  # typo: max_iter
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.max_iters" in err[0] and "no such key" in err[0]
    mm_config = str(REPO / "configs" / "mmdet" / "demo" / "efficientdet_shapes.py")
    assert tool.run(["--config-file", mm_config]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a Detectron2 LazyConfig" in err[0]
    assert "tools/mm_train.py" in err[0]
    # a Python file that is neither: named as such too
    other = tmp_path / "other.py"
    other.write_text("x = 1\n")
    with pytest.raises(LazyConfigError, match="not a Detectron2 LazyConfig .no `model"):
        load_lazy_config(str(other))
    with pytest.raises(LazyConfigError, match="config file not found"):
        load_lazy_config(str(tmp_path / "absent.py"))
    assert tool.run(["--config-file", DEMO, "--eval-only"]) == 1
    err = capsys.readouterr().err
    assert "--eval-only needs train.init_checkpoint" in err
