"""LazyConfig support: call targets for ``configs/lazy/`` and loading helpers.

Detectron2's Python configs (``detectron2.config.LazyCall`` / ``LazyConfig``) build objects
from explicit keyword arguments. The RetinaNet and CornerNet meta-architectures are LazyCalled
directly; for EfficientDet, whose backbone (EfficientNet + BiFPN) and heads are parts of one
core network (:class:`plugins.core.efficientdet.EfficientDet`, built once, as
``EfficientDet.from_config`` does), :func:`efficientdet_model` takes that network and the
meta-architecture's other arguments. :func:`efficientdet_variant` applies the same overrides as
``MODEL.EFFICIENTDET.FPN_CHANNELS`` / ``FPN_REPEATS`` / ``HEAD_REPEATS`` / ``ANCHOR_SCALE``.
:func:`optimizer_with_clipping` is ``SOLVER.CLIP_GRADIENTS`` for LazyConfigs.
"""

from __future__ import annotations

import ast
import copy
import os
from collections.abc import Iterable, Sequence

import torch
import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import LazyConfig
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling.matcher import Matcher
from omegaconf import DictConfig, OmegaConf

from plugins.core.efficientdet import EfficientDet as CoreEfficientDet
from plugins.core.variants import EfficientDetVariant

from ._compat import HAS_D2_C
from .datasets import prepare_dataset
from .efficientdet import EfficientDet, EfficientDetHead, EfficientNetBiFPN, variant_from_cfg
from .optim import with_gradient_clipping

__all__ = [
    "LazyConfigError",
    "coco_evaluator",
    "efficientdet_model",
    "efficientdet_variant",
    "lazy_config_text",
    "load_lazy_config",
    "optimizer_with_clipping",
]


class LazyConfigError(ValueError):
    """A LazyConfig file or override is invalid (names the file or key)."""


def efficientdet_variant(
    name: str,
    fpn_channels: int = 0,
    fpn_repeats: int = 0,
    head_repeats: int = 0,
    anchor_scale: float = 0.0,
) -> EfficientDetVariant:
    """A variant of the table with optional overrides (0 keeps the table value).

    Args:
        name: ``"efficientdet_d0"`` ... ``"efficientdet_d7x"``, ``"efficientdet_test"``,
            ``"efficientdet_demo"``.
        fpn_channels, fpn_repeats, head_repeats, anchor_scale: as the YAML keys
            ``MODEL.EFFICIENTDET.*`` of the same names.

    Returns:
        The variant (named ``<name>_custom`` when something was overridden).
    """
    node = CN(
        {
            "VARIANT": name,
            "FPN_CHANNELS": fpn_channels,
            "FPN_REPEATS": fpn_repeats,
            "HEAD_REPEATS": head_repeats,
            "ANCHOR_SCALE": anchor_scale,
        }
    )
    return variant_from_cfg(CN({"MODEL": CN({"EFFICIENTDET": node})}))


def efficientdet_model(
    *,
    network: CoreEfficientDet,
    anchor_matcher: Matcher,
    head_in_features: Sequence[str] | None = None,
    **kwargs,
) -> EfficientDet:
    """The ``EfficientDet`` meta-architecture around one core network.

    Args:
        network: the core network; its ``backbone`` + ``fpn`` become the Detectron2 backbone
            (``p3``..``p7``, ``p8`` for D7x) and its ``class_net`` + ``box_net`` the head, so
            the parameter names equal those of the YAML-built model.
        anchor_matcher: the anchor labeller (EfficientDet: ``Matcher([0.5], [0, 1],
            allow_low_quality_matches=True)``).
        head_in_features: backbone outputs given to the head; ``None``: all, finest first.
        **kwargs: the other arguments of :class:`plugins.d2.efficientdet.EfficientDet`
            (losses, test-time thresholds, NMS, ``pixel_mean``, ``pixel_std``,
            ``input_format``, ``vis_period``); ``variant`` and ``num_classes`` come from
            ``network``.

    Returns:
        The meta-architecture.
    """
    backbone = EfficientNetBiFPN(network.backbone, network.fpn, min_level=network.variant.min_level)
    return EfficientDet(
        backbone=backbone,
        head=EfficientDetHead(network.class_net, network.box_net),
        head_in_features=list(head_in_features or backbone._out_features),
        variant=network.variant,
        anchor_matcher=anchor_matcher,
        num_classes=network.num_classes,
        **kwargs,
    )


def optimizer_with_clipping(
    *,
    optimizer: str,
    params,
    clip_gradients: dict | None = None,
    **kwargs,
) -> torch.optim.Optimizer:
    """A ``torch.optim`` optimizer with Detectron2's ``SOLVER.CLIP_GRADIENTS`` behaviour.

    Args:
        optimizer: a class name of ``torch.optim`` (``"SGD"``, ``"AdamW"``, ...).
        params: parameter groups (``get_default_optimizer_params``).
        clip_gradients: ``dict(enabled, clip_type, clip_value, norm_type)`` as the YAML keys
            ``SOLVER.CLIP_GRADIENTS.*`` (``clip_type`` ``"value"`` or ``"norm"``: per
            parameter, as Detectron2 clips; ``"full_model"``: the joint norm of all gradients,
            as the EfficientDet paper and MMDetection clip, :mod:`plugins.d2.optim`); ``None``
            or ``enabled=False``: no clipping.
        **kwargs: the optimizer's arguments (``lr``, ``momentum``, ``weight_decay``, ...).

    Returns:
        The optimizer.

    Raises:
        LazyConfigError: unknown optimizer name or clipping type.
    """
    cls = getattr(torch.optim, optimizer, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise LazyConfigError(f"optimizer: {optimizer!r} is not a torch.optim optimizer")
    clip = dict(clip_gradients or {})
    node = CN(
        {
            "ENABLED": bool(clip.get("enabled", False)),
            "CLIP_TYPE": clip.get("clip_type", "value"),
            "CLIP_VALUE": float(clip.get("clip_value", 1.0)),
            "NORM_TYPE": float(clip.get("norm_type", 2.0)),
        }
    )
    try:
        cls = with_gradient_clipping(node, cls, key="optimizer.clip_gradients")
    except ValueError as e:
        raise LazyConfigError(str(e)) from e
    return cls(params, **kwargs)


def _is_mmengine_config(path: str) -> bool:
    """Whether the Python file ``path`` assigns ``_base_`` or ``custom_imports`` at top level
    (mmengine's config idiom; a LazyConfig inherits by importing)."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, UnicodeDecodeError, OSError):
        return False  # LazyConfig.load reports it
    names = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    return bool(names & {"_base_", "custom_imports"})


def load_lazy_config(path: str, overrides: Iterable[str] = ()) -> DictConfig:
    """``LazyConfig.load`` + ``apply_overrides`` with one-line errors.

    Args:
        path: a ``.py`` LazyConfig (``configs/lazy/*.py``).
        overrides: ``key=value`` strings (Hydra override syntax).

    Returns:
        The config, with at least ``model`` (a LazyCall) and ``train``.

    Raises:
        LazyConfigError: missing or invalid file, not a LazyConfig, bad override.
    """
    if not os.path.isfile(path):
        raise LazyConfigError(f"config file not found: {path}")
    if _is_mmengine_config(path):  # before running it: its `_base_` tricks fail as a LazyConfig
        raise LazyConfigError(
            f"{path}: not a Detectron2 LazyConfig but an MMDetection (mmengine) config "
            "(`_base_` / `custom_imports`): train it with tools/mm_train.py"
        )
    try:
        cfg = LazyConfig.load(path)
    except Exception as e:  # the file is Python: any error of its code lands here
        raise LazyConfigError(f"{path}: cannot load ({type(e).__name__}: {e})") from e
    model = cfg.get("model")
    if not isinstance(model, DictConfig) or "_target_" not in model:
        raise LazyConfigError(
            f"{path}: not a Detectron2 LazyConfig (no `model = LazyCall(...)(...)`)"
        )
    if "train" not in cfg:
        raise LazyConfigError(f"{path}: no `train` dict (configs/lazy/common/train.py)")
    for item in overrides:
        _check_override_key(cfg, item)
        try:
            LazyConfig.apply_overrides(cfg, [item])
        except Exception as e:  # hydra parser / omegaconf errors
            raise LazyConfigError(f"override {item!r}: {type(e).__name__}: {e}") from e
    return cfg


def _check_override_key(cfg: DictConfig, item: str) -> None:
    """A new key is accepted as another argument of a LazyCall, else it is a typo."""
    key = item.split("=", 1)[0].strip().lstrip("+~")
    if "=" not in item or not key:
        raise LazyConfigError(f"override {item!r}: expected key=value")
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    if isinstance(parent, DictConfig) and leaf not in parent and "_target_" not in parent:
        raise LazyConfigError(
            f"override {item!r}: no such key {key!r} (keys of {parent_key or 'the config'}: "
            f"{', '.join(sorted(str(k) for k in parent))})"
        )


def lazy_config_text(cfg: DictConfig) -> str:
    """The config as YAML text (call targets as dotted names), as ``LazyConfig.save`` writes.

    Values YAML cannot represent are written as their ``repr``.
    """

    def plain(node):
        if isinstance(node, dict):
            return {str(k): plain(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [plain(v) for v in node]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if callable(node) and hasattr(node, "__qualname__"):
            return f"{node.__module__}.{node.__qualname__}"
        return repr(node)

    container = OmegaConf.to_container(copy.deepcopy(cfg), resolve=False)
    return yaml.safe_dump(plain(container), default_flow_style=None, sort_keys=False, width=100)


def coco_evaluator(dataset_name: str, output_dir: str | None = None) -> COCOEvaluator:
    """COCO box AP on ``dataset_name``, as ``Trainer.build_evaluator`` makes it.

    The fast evaluator only when Detectron2's C++ extension is built; the embedded datasets'
    metadata is prepared first.
    """
    prepare_dataset(dataset_name)
    return COCOEvaluator(
        dataset_name, tasks=("bbox",), output_dir=output_dir, use_fast_impl=HAS_D2_C
    )
