"""The shared bases of configs/mmdet reach every config: the plugins' hooks are not lost where a
config adds a hook of its own (`custom_hooks = [dict(...), *_base_.custom_hooks]`)."""

from __future__ import annotations

from pathlib import Path

from mmengine.config import Config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "mmdet"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.py") if "_base_" not in p.parts)
PLUGIN_HOOKS = ["PluginsDivergenceGuardHook", "PluginsExactResumeHook", "PluginsPublishHook"]


def test_every_config_runs_the_plugins_hooks_once():
    assert len(CONFIGS) >= 17
    for path in CONFIGS:
        cfg = Config.fromfile(str(path))
        types = [h["type"] for h in cfg.custom_hooks]
        assert [t for t in types if t in PLUGIN_HOOKS] == PLUGIN_HOOKS, (path.name, types)
        assert "plugins.mm" in cfg.custom_imports["imports"], path.name
        if path.stem.startswith("efficientdet"):  # the EfficientDet recipes average the weights
            assert types[0] == "EMAHook", (path.name, types)
