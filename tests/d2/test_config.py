"""Config keys and YAML files of the Detectron2 adapters."""

from __future__ import annotations

import plugins.d2  # noqa: F401  (first: detectron2._C stand-in)

# isort: split
import glob
import inspect
import os
import re

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from plugins.core.variants import EFFICIENTDET_VARIANTS
from plugins.d2 import add_plugins_config
from plugins.d2 import config as plugin_config
from plugins.d2.efficientdet import EfficientDet, EfficientNetBiFPN, variant_from_cfg

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
YAMLS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
)
VARIANT_YAMLS = [f"configs/efficientdet_{v}.yaml" for v in "d0 d1 d2 d3 d4 d5 d6 d7 d7x".split()]


def load(path: str, *opts):
    cfg = get_cfg()
    add_plugins_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, path))
    cfg.merge_from_list(list(opts))
    return cfg


def build_on_meta(cfg):
    """Build the model without allocating weights (parameters on the meta device)."""
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return build_model(cfg)


def test_new_keys_exist_with_defaults():
    cfg = get_cfg()
    add_plugins_config(cfg)
    assert cfg.MODEL.EFFICIENTDET.VARIANT == "efficientdet_d0"
    assert cfg.MODEL.EFFICIENTDET.FOCAL_LOSS_GAMMA == 1.5
    assert cfg.MODEL.EFFICIENTDET.HUBER_DELTA == 0.1
    assert cfg.MODEL.EFFICIENTDET.BOX_LOSS_WEIGHT == 50.0
    assert cfg.MODEL.EMA.DECAY == 0.9998 and cfg.MODEL.EMA.ENABLED is False
    assert cfg.MODEL.NMS.TYPE == "hard"
    assert cfg.MODEL.RETINANET.CLS_LOSS_TYPE == "sigmoid_focal"
    assert "CORNERNET" in cfg.MODEL  # add_cornernet_config is called
    # Detectron2's own defaults are untouched
    assert cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA == get_cfg().MODEL.RETINANET.FOCAL_LOSS_GAMMA
    # a second call changes nothing
    before = cfg.dump()
    add_plugins_config(cfg)
    assert cfg.dump() == before


def test_every_plugin_key_has_a_comment():
    """Every ``node.KEY = value`` line in config.py is directly preceded by a comment line."""
    lines = inspect.getsource(plugin_config).splitlines()
    assignments = 0
    for i, line in enumerate(lines):
        if re.match(r"\s+node\.[A-Z_]+ = ", line):
            assignments += 1
            j = i - 1
            while re.match(r"\s+node\.[A-Z_]+ = ", lines[j]):  # grouped keys share a comment
                j -= 1
            assert lines[j].strip().startswith("#"), f"no comment above: {line.strip()}"
    assert assignments >= 25


def test_unknown_key_is_rejected():
    cfg = get_cfg()
    add_plugins_config(cfg)
    # yacs: KeyError from a file, AssertionError from a KEY VALUE list
    with pytest.raises((KeyError, AssertionError), match="MODEL.EFFICIENTDET.NOPE"):
        cfg.merge_from_list(["MODEL.EFFICIENTDET.NOPE", "1"])


def test_yaml_files_are_found():
    assert set(VARIANT_YAMLS) <= set(YAMLS)
    assert "configs/demo/efficientdet_shapes.yaml" in YAMLS
    assert "configs/retinanet_R_50_FPN_1x_softnms.yaml" in YAMLS


@pytest.mark.parametrize("path", YAMLS)
def test_yaml_loads_and_builds(path):
    cfg = load(path)
    model = build_on_meta(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("path", VARIANT_YAMLS)
def test_variant_configs_follow_the_table(path):
    cfg = load(path, "MODEL.EFFICIENTDET.NUM_CLASSES", "90")  # effdet's counts use 90 classes
    variant = EFFICIENTDET_VARIANTS[cfg.MODEL.EFFICIENTDET.VARIANT]
    assert cfg.INPUT.MIN_SIZE_TEST == cfg.INPUT.MAX_SIZE_TEST == variant.image_size
    assert cfg.MODEL.NMS.TYPE == "gaussian" and cfg.MODEL.EMA.DECAY == 0.9998
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupCosineLR" and cfg.SOLVER.WARMUP_ITERS > 0
    assert cfg.INPUT.SCALE_JITTER.ENABLED
    assert (cfg.INPUT.SCALE_JITTER.MIN_SCALE, cfg.INPUT.SCALE_JITTER.MAX_SCALE) == (0.1, 2.0)
    model = build_on_meta(cfg)
    assert isinstance(model, EfficientDet) and isinstance(model.backbone, EfficientNetBiFPN)
    assert sum(p.numel() for p in model.parameters()) == variant.expected_params
    levels = range(variant.min_level, variant.max_level + 1)
    assert model.head_in_features == [f"p{lvl}" for lvl in levels]
    assert model.backbone.size_divisibility == 2**variant.max_level


def test_variant_overrides():
    cfg = load(
        "configs/demo/efficientdet_shapes.yaml",
        "MODEL.EFFICIENTDET.FPN_CHANNELS", "24",
        "MODEL.EFFICIENTDET.ANCHOR_SCALE", "3.0",
    )  # fmt: skip
    v = variant_from_cfg(cfg)
    base = EFFICIENTDET_VARIANTS[cfg.MODEL.EFFICIENTDET.VARIANT]
    assert (v.fpn_channels, v.anchor_scale) == (24, 3.0)
    assert (v.image_size, v.width_mult) == (base.image_size, base.width_mult)
    model = build_on_meta(cfg)
    assert {s.channels for s in model.backbone.output_shape().values()} == {24}
