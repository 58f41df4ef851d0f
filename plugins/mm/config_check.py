"""Check an MMDetection config before anything is built: every registry ``type`` and basic values.

mmengine builds each component when it is first needed, so a misspelled transform fails at the
first batch, a misspelled ``nms`` type only at the first validation (after training), and each
as a raw registry traceback. :func:`check_config` walks the whole config up front and returns
one line per problem, naming the key path, the bad value and the closest registered names::

    unknown transform type 'RandomFlipp' at train_dataloader.dataset.pipeline[4].type
    (mmdet's TRANSFORMS registry); did you mean 'RandomFlip'?

Where each ``type`` is looked up (mmdet's registries, which fall back to mmengine's / mmcv's):

- ``model`` and everything inside it: ``MODELS`` (detectors, backbones, necks, heads, losses,
  norm / activation / conv layers); assigners, samplers, box coders, anchor / prior generators,
  IoU calculators and match costs: ``TASK_UTILS`` (a name found in the other one of the two is
  accepted too); ``init_cfg``: ``WEIGHT_INITIALIZERS``; ``nms``: mmcv's NMS functions
  (:data:`MMCV_NMS_TYPES`) or ours (:data:`plugins.mm.soft_nms.SOFT_NMS_TYPES`);
- datasets (through ``dataset`` / ``datasets`` wrappers): ``DATASETS``; their ``pipeline``
  transforms (and transforms nested in them): ``TRANSFORMS``; ``sampler`` / ``batch_sampler``:
  ``DATA_SAMPLERS``;
- ``optim_wrapper``: ``OPTIM_WRAPPERS``, its ``optimizer``: ``OPTIMIZERS``, its ``constructor``:
  ``OPTIM_WRAPPER_CONSTRUCTORS``; ``param_scheduler``: ``PARAM_SCHEDULERS``;
- ``default_hooks`` / ``custom_hooks``: ``HOOKS``; evaluators: ``METRICS`` (``EVALUATOR``);
  ``visualizer`` / ``vis_backends``: ``VISUALIZERS`` / ``VISBACKENDS``; ``train_cfg`` /
  ``val_cfg`` / ``test_cfg``: ``LOOPS``; ``log_processor``, ``model_wrapper_cfg``,
  ``runner_type``.

Values: batch sizes, worker counts, epochs / iterations, intervals, class counts, learning
rate, weight decay, momentum, gradient clipping, scheduler ranges and the seed must have the
right type and range. Call it after the config's ``custom_imports`` ran (``Config.fromfile``
does that) and with mmdet's modules registered (:func:`check_config` registers them).
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Callable, Iterator

__all__ = ["MMCV_NMS_TYPES", "check_config"]

#: ``nms.type`` values that ``mmcv.ops.batched_nms`` resolves (functions of ``mmcv.ops.nms``).
MMCV_NMS_TYPES = ("nms", "soft_nms", "nms_match", "nms_rotated", "nms_quadri")

# keys inside ``model`` whose configs are built from TASK_UTILS
_TASK_UTIL_KEYS = frozenset(
    {
        "assigner",
        "sampler",
        "bbox_coder",
        "anchor_generator",
        "prior_generator",
        "point_generator",
        "iou_calculator",
        "match_cost",
        "match_costs",
        "coder",
        "bbox_sampler",
    }
)

# keys inside ``model`` whose ``type`` names a function / class of ``mmcv.ops`` (RoI extractors)
_MMCV_OPS_KEYS = frozenset({"roi_layer"})

# keys inside ``model`` whose lower-case ``type`` must be registered too (elsewhere a lower-case
# ``type`` may be a module's own option, e.g. FPG's ``"last_conv"`` or Cascade RPN's ``"offset"``)
_LAYER_CFG_KEYS = frozenset({"norm_cfg", "act_cfg", "conv_cfg", "upsample_cfg"})

# words for the registries in messages
_KINDS = {
    "MODELS": "model",
    "TASK_UTILS": "task-util",
    "WEIGHT_INITIALIZERS": "weight-initializer",
    "DATASETS": "dataset",
    "TRANSFORMS": "transform",
    "DATA_SAMPLERS": "data sampler",
    "OPTIM_WRAPPERS": "optim wrapper",
    "OPTIMIZERS": "optimizer",
    "OPTIM_WRAPPER_CONSTRUCTORS": "optim-wrapper constructor",
    "PARAM_SCHEDULERS": "param scheduler",
    "HOOKS": "hook",
    "METRICS": "metric",
    "EVALUATOR": "evaluator",
    "VISUALIZERS": "visualizer",
    "VISBACKENDS": "vis backend",
    "LOOPS": "loop",
    "LOG_PROCESSORS": "log processor",
    "MODEL_WRAPPERS": "model wrapper",
    "RUNNERS": "runner",
}

_PLUGINS_HINT = (
    "; types named Plugins* need custom_imports = dict(imports=['plugins.mm'], "
    "allow_failed_imports=False) in the config"
)


def _registries() -> dict:
    import mmdet.registry as reg
    from mmdet.utils import register_all_modules

    import plugins.mm  # noqa: F401  (our types, whatever the config imports)

    register_all_modules(init_default_scope=False)
    return {name: getattr(reg, name) for name in _KINDS}


def _names(registry) -> list[str]:
    """Every name ``registry.get`` resolves without a scope prefix (its own and its parents')."""
    registry.import_from_location()
    names: set[str] = set()
    while registry is not None:
        names.update(registry.module_dict)
        registry = registry.parent
    return sorted(names)


def _close(name: str, candidates: list[str]) -> list[str]:
    """Up to three candidates close to ``name`` (case-insensitive)."""
    lower = {c.lower(): c for c in candidates}
    return [lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), 3, 0.6)]


class _Checker:
    def __init__(self, registries: dict) -> None:
        self.reg = registries
        self.problems: list[str] = []
        self._name_cache: dict[str, list[str]] = {}

    def names(self, reg_name: str) -> list[str]:
        if reg_name not in self._name_cache:
            self._name_cache[reg_name] = _names(self.reg[reg_name])
        return self._name_cache[reg_name]

    # ------------------------------------------------------------------ types
    def type_of(
        self,
        node,
        path: str,
        reg_name: str,
        also: tuple[str, ...] = (),
        accept: Callable[[str], bool] | None = None,
    ) -> None:
        """Check ``node["type"]`` (when it is a string) against ``reg_name`` (or ``also``);
        ``accept(name)`` true lets an unregistered name pass."""
        if not isinstance(node, dict):
            return
        name = node.get("type")
        if not isinstance(name, str):
            return
        if any(self.reg[r].get(name) is not None for r in (reg_name, *also)):
            return
        if accept is not None and accept(name):
            return
        scope = name.split(".", 1)[0] if "." in name else None
        if scope is not None and not _importable(f"{scope}.registry"):
            self.problems.append(
                f"type {name!r} at {path}.type needs the package of scope {scope!r}, which is "
                f"not installed (its {scope}.registry cannot be imported)"
            )
            return
        matches = _close(name.rsplit(".", 1)[-1], self.names(reg_name))
        hint = (
            f"did you mean {', '.join(repr(m) for m in matches)}?" if matches else "no close match"
        )
        if name.startswith("Plugins") and not matches:
            hint += _PLUGINS_HINT
        self.problems.append(
            f"unknown {_KINDS[reg_name]} type {name!r} at {path}.type "
            f"(not in mmdet's {reg_name} registry); {hint}"
        )

    def nms(self, node, path: str) -> None:
        from plugins.mm.soft_nms import SOFT_NMS_TYPES

        name = node.get("type") if isinstance(node, dict) else None
        if not isinstance(name, str) or name in MMCV_NMS_TYPES or name in SOFT_NMS_TYPES:
            return
        known = [*MMCV_NMS_TYPES, *SOFT_NMS_TYPES]
        matches = _close(name, known)
        hint = f"did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
        self.problems.append(
            f"unknown nms type {name!r} at {path}.type (mmcv's {', '.join(MMCV_NMS_TYPES)} or "
            f"the plugins' {', '.join(SOFT_NMS_TYPES)}); {hint or 'no close match'}"
        )

    def model(self, node: dict, path: str) -> None:
        """Every dict inside a model config (the node's own type is checked by the caller)."""
        for key, value in node.items():
            for sub_path, sub in _dicts(value, f"{path}.{key}"):
                if key == "nms":
                    self.nms(sub, sub_path)
                    continue
                if key == "init_cfg":
                    self.type_of(sub, sub_path, "WEIGHT_INITIALIZERS")
                    continue
                if key in _MMCV_OPS_KEYS:
                    self.type_of(sub, sub_path, "MODELS", accept=_is_mmcv_op)
                    continue
                if key in _TASK_UTIL_KEYS:
                    self.type_of(sub, sub_path, "TASK_UTILS", also=("MODELS",))
                elif key in _LAYER_CFG_KEYS or key.startswith("loss"):
                    self.type_of(sub, sub_path, "MODELS", also=("TASK_UTILS",))
                else:
                    self.type_of(sub, sub_path, "MODELS", ("TASK_UTILS",), accept=str.islower)
                self.model(sub, sub_path)

    def dataset(self, node, path: str) -> None:
        if not isinstance(node, dict):
            return
        self.type_of(node, path, "DATASETS")
        for i, transform in enumerate(node.get("pipeline") or []):
            self.transform(transform, f"{path}.pipeline[{i}]")
        self.dataset(node.get("dataset"), f"{path}.dataset")
        for i, sub in enumerate(node.get("datasets") or []):
            self.dataset(sub, f"{path}.datasets[{i}]")

    def transform(self, node, path: str) -> None:
        if not isinstance(node, dict):
            return
        self.type_of(node, path, "TRANSFORMS")
        if node.get("type") in ("Albu", "mmdet.Albu"):  # albumentations' own types inside
            return
        for key, value in node.items():  # RandomChoice, TestTimeAug, KeyMapper, ...
            for sub_path, sub in _dicts(value, f"{path}.{key}"):
                if "type" in sub:
                    self.transform(sub, sub_path)

    def loader(self, name: str, node) -> None:
        if not isinstance(node, dict):
            return
        for key in ("sampler", "batch_sampler"):
            self.type_of(node.get(key), f"{name}.{key}", "DATA_SAMPLERS")
        self.dataset(node.get("dataset"), f"{name}.dataset")

    def evaluator(self, name: str, node) -> None:
        if isinstance(node, dict) and "metrics" in node:
            self.type_of(node, name, "EVALUATOR")
            node, name = node["metrics"], f"{name}.metrics"
        for sub_path, sub in _dicts(node, name):
            self.type_of(sub, sub_path, "METRICS")

    # ------------------------------------------------------------------ values
    def value(
        self, node, path: str, ok: Callable[[object], bool], expected: str, shown: str = ""
    ) -> None:
        """Check the value at the dotted ``path`` in ``node`` when it exists (absent keys are
        fine); the message names it ``shown`` (default ``path``)."""
        *parents, key = path.split(".")
        for part in parents:
            if not _is_mapping(node):
                return
            node = node.get(part)
        if not _is_mapping(node) or key not in node:
            return
        value = node[key]
        if not ok(value):
            self.problems.append(
                f"{shown or path}: expected {expected}, got {value!r} ({type(value).__name__})"
            )


def _is_mapping(node) -> bool:
    """A dict, ``ConfigDict`` or mmengine ``Config`` (which is not a dict)."""
    return isinstance(node, dict) or (hasattr(node, "get") and hasattr(node, "__contains__"))


def _importable(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _is_mmcv_op(name: str) -> bool:
    """mmdet's RoI extractors resolve ``roi_layer.type`` as an attribute of ``mmcv.ops``."""
    try:
        import mmcv.ops
    except ImportError:  # cannot tell: let the build decide
        return True
    return hasattr(mmcv.ops, name)


def _dicts(value, path: str) -> Iterator[tuple[str, dict]]:
    """Dicts in ``value``: itself, or the items of (nested) lists / tuples, with their paths."""
    if isinstance(value, dict):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _dicts(item, f"{path}[{i}]")


def _int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _positive_int(v) -> bool:
    return _int(v) and v > 0


def _check_values(c: _Checker, cfg, mode: str) -> None:
    loaders = ("train_dataloader", "val_dataloader", "test_dataloader")
    if mode == "test":
        loaders = ("test_dataloader",)
    for loader in loaders:
        c.value(cfg, f"{loader}.batch_size", _positive_int, "an int > 0")
        c.value(cfg, f"{loader}.num_workers", lambda v: _int(v) and v >= 0, "an int >= 0")
        c.value(cfg, f"{loader}.persistent_workers", lambda v: isinstance(v, bool), "True/False")
    _num_classes(c, cfg.get("model"), "model")
    if mode == "test":
        return
    c.value(cfg, "train_cfg.max_epochs", _positive_int, "an int > 0")
    c.value(cfg, "train_cfg.max_iters", _positive_int, "an int > 0")
    c.value(cfg, "train_cfg.val_interval", _positive_int, "an int > 0")
    c.value(cfg, "train_cfg.val_begin", lambda v: _int(v) and v >= 0, "an int >= 0")
    c.value(cfg, "default_hooks.checkpoint.interval", _int, "an int (-1: never)")
    c.value(cfg, "default_hooks.checkpoint.max_keep_ckpts", _int, "an int (-1: keep all)")
    c.value(cfg, "default_hooks.logger.interval", _positive_int, "an int > 0")
    c.value(cfg, "randomness.seed", lambda v: v is None or _int(v), "an int or None")
    c.value(cfg, "auto_scale_lr.base_batch_size", _positive_int, "an int > 0")
    for prefix in ("optim_wrapper.optimizer", "optimizer"):
        c.value(cfg, f"{prefix}.lr", lambda v: _number(v) and v >= 0, "a number >= 0")
        c.value(cfg, f"{prefix}.weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0")
        c.value(
            cfg, f"{prefix}.momentum", lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"
        )
    c.value(
        cfg, "optim_wrapper.clip_grad", lambda v: v is None or isinstance(v, dict), "a dict or None"
    )
    c.value(cfg, "optim_wrapper.clip_grad.max_norm", lambda v: _number(v) and v > 0, "a number > 0")
    c.value(cfg, "optim_wrapper.accumulative_counts", _positive_int, "an int > 0")
    for path, sched in _dicts(_schedulers(cfg), "param_scheduler"):
        for key in ("begin", "end"):
            c.value(sched, key, lambda v: _int(v) and v >= 0, "an int >= 0", f"{path}.{key}")
        begin, end = sched.get("begin", 0), sched.get("end")
        if _int(begin) and _int(end) and end <= begin:
            c.problems.append(f"{path}: end ({end}) must be greater than begin ({begin})")


def _schedulers(cfg):
    """``param_scheduler`` as a dict or list (a dict of lists, one per optimizer, flattened)."""
    schedulers = cfg.get("param_scheduler")
    if isinstance(schedulers, dict) and "type" not in schedulers:
        return list(schedulers.values())
    return schedulers


def _num_classes(c: _Checker, node, path: str) -> None:
    for key, value in (node or {}).items() if isinstance(node, dict) else ():
        if key == "num_classes" and not _positive_int(value):
            c.problems.append(f"{path}.num_classes: expected an int > 0, got {value!r}")
        for sub_path, sub in _dicts(value, f"{path}.{key}"):
            _num_classes(c, sub, sub_path)


def check_config(cfg, mode: str = "train") -> list[str]:
    """Every problem of an MMDetection config, one line each (empty: none found).

    Args:
        cfg: an ``mmengine.config.Config`` (or a dict of the same shape).
        mode: ``"train"`` checks everything; ``"test"`` what testing builds (the model,
            ``test_dataloader``, ``test_evaluator``, ``test_cfg``, hooks, visualizer).

    Returns:
        Lines such as ``"unknown loss ... at model.bbox_head.loss_cls.type ...; did you mean
        'FocalLoss'?"`` or ``"train_dataloader.batch_size: expected an int > 0, got '8' (str)"``.
    """
    if mode not in ("train", "test"):
        raise ValueError(f"mode: expected 'train' or 'test', got {mode!r}")
    c = _Checker(_registries())
    model = cfg.get("model")
    if not isinstance(model, dict):
        return ["no 'model' entry (a dict with the detector's type)"]
    c.type_of(model, "model", "MODELS")
    c.model(model, "model")

    train = mode == "train"
    loaders = ("train_dataloader", "val_dataloader", "test_dataloader") if train else ()
    for name in loaders or ("test_dataloader",):
        c.loader(name, cfg.get(name))
    for name in ("val_evaluator", "test_evaluator") if train else ("test_evaluator",):
        c.evaluator(name, cfg.get(name))
    for name in ("train_cfg", "val_cfg", "test_cfg") if train else ("test_cfg",):
        c.type_of(cfg.get(name), name, "LOOPS")
    if train:
        wrapper = cfg.get("optim_wrapper")
        if isinstance(wrapper, dict):
            c.type_of(wrapper, "optim_wrapper", "OPTIM_WRAPPERS")
            c.type_of(wrapper.get("optimizer"), "optim_wrapper.optimizer", "OPTIMIZERS")
            constructor = wrapper.get("constructor")
            if isinstance(constructor, str):
                c.type_of(
                    {"type": constructor}, "optim_wrapper.constructor", "OPTIM_WRAPPER_CONSTRUCTORS"
                )
        c.type_of(cfg.get("optimizer"), "optimizer", "OPTIMIZERS")
        for path, sched in _dicts(_schedulers(cfg), "param_scheduler"):
            c.type_of(sched, path, "PARAM_SCHEDULERS")
    for name, hook in (cfg.get("default_hooks") or {}).items():
        c.type_of(hook, f"default_hooks.{name}", "HOOKS")
    for path, hook in _dicts(cfg.get("custom_hooks"), "custom_hooks"):
        c.type_of(hook, path, "HOOKS")
    visualizer = cfg.get("visualizer")
    c.type_of(visualizer, "visualizer", "VISUALIZERS")
    if isinstance(visualizer, dict):
        for path, backend in _dicts(visualizer.get("vis_backends"), "visualizer.vis_backends"):
            c.type_of(backend, path, "VISBACKENDS")
    c.type_of(cfg.get("log_processor"), "log_processor", "LOG_PROCESSORS")
    c.type_of(cfg.get("model_wrapper_cfg"), "model_wrapper_cfg", "MODEL_WRAPPERS")
    runner_type = cfg.get("runner_type")
    if isinstance(runner_type, str):
        c.type_of({"type": runner_type}, "runner_type", "RUNNERS")
    _check_values(c, cfg, mode)
    return c.problems
