#!/usr/bin/env python
"""Train or evaluate with Detectron2 LazyConfigs (``configs/lazy/*.py``) and the plugins.

The command line of Detectron2's ``tools/lazyconfig_train_net.py`` (the registry's Detectron2
0.6 does not install that script)::

    python tools/lazyconfig_train_net.py --config-file configs/lazy/demo/efficientdet_shapes.py
    python tools/lazyconfig_train_net.py --config-file configs/lazy/efficientdet_d0.py --num-gpus 8
    python tools/lazyconfig_train_net.py --config-file ... --resume        # continue output_dir
    python tools/lazyconfig_train_net.py --config-file ... --eval-only \\
        train.init_checkpoint=output/model_final-1a2b3c4d.pth
    python tools/lazyconfig_train_net.py --config-file ... train.max_iter=100 train.device=cpu

Your own COCO-format data (``--coco-dataset NAME JSON IMAGE_ROOT``, repeatable, as in
``tools/train_net.py``), then named in the dataset overrides::

    python tools/lazyconfig_train_net.py --config-file configs/lazy/demo/efficientdet_shapes.py \
        --coco-dataset my_train data/my/train.json data/my/train \
        --coco-dataset my_val data/my/val.json data/my/val \
        dataloader.train.dataset.names=my_train dataloader.test.dataset.names=my_val \
        model.network.num_classes=3

Overrides are ``key=value`` (Hydra syntax). What the config holds: ``model``, ``dataloader``
(``train``, ``test``, ``evaluator``), ``optimizer``, ``lr_multiplier`` and ``train``
(``configs/lazy/common/train.py``). On top of Detectron2's script, as ``tools/train_net.py``
does for YAML configs: the datasets' contents are checked before training
(:mod:`plugins.d2.data_check`: missing images, no valid box, the model's class count against
the categories; NaN / degenerate boxes are dropped from the loaders and the evaluator's ground
truth); ``train.divergence_guard`` (``SOLVER.DIVERGENCE_GUARD``, :mod:`plugins.d2.guard`) stops
a diverging run and refuses checkpoints with non-finite or exploded weights; ``train.ema`` keeps
an exponential moving average of the weights, checkpointed under ``"ema"`` and used for every
evaluation (and by ``--eval-only``); ``train.publish`` writes the model-zoo file
``<output_dir>/<name>-<sha256[:8]>.pth`` at the end of training (:mod:`plugins.d2.publish`);
``--resume`` after a kill ends with the same weights as an uninterrupted run
(:mod:`plugins.d2.resume`: the train loader continues at the resumed iteration, every iteration
is reseeded from ``train.seed``, which the checkpoint keeps); ``--num-gpus N`` on the CPU with
gloo (:mod:`plugins.d2.launch`). A bad config, key, dataset or checkpoint, or a diverging loss, stops the run with exit status 1 and
one line ``lazyconfig_train_net.py: error: ...``.
"""

from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import plugins.d2  # noqa: E402, F401  (first: stands in for a missing detectron2._C)

# isort: split
import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import CfgNode, get_cfg, instantiate  # noqa: E402
from detectron2.engine import (  # noqa: E402
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.engine.defaults import create_ddp_model  # noqa: E402
from detectron2.evaluation import inference_on_dataset, print_csv_format  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from torch import nn  # noqa: E402

from plugins.d2 import add_plugins_config  # noqa: E402
from plugins.d2.data_check import (  # noqa: E402
    check_named_datasets,
    drop_bad_ground_truth,
    lazy_num_classes,
)
from plugins.d2.datasets import (  # noqa: E402
    DatasetMissingError,
    add_coco_dataset_argument,
    check_datasets,
    lazy_dataset_hint,
    register_coco_json_datasets,
)
from plugins.d2.ema import EMAHook, ModelEMA, unwrap_model  # noqa: E402
from plugins.d2.engine import CheckpointLoadError, load_checkpoint  # noqa: E402
from plugins.d2.guard import divergence_as_error, install_divergence_guard  # noqa: E402
from plugins.d2.launch import cpu_launch_problem, launch  # noqa: E402
from plugins.d2.lazy import LazyConfigError, lazy_config_text, load_lazy_config  # noqa: E402
from plugins.d2.publish import publish_state  # noqa: E402
from plugins.d2.resume import (  # noqa: E402
    build_lazy_train_loader,
    install_exact_resume,
    resolve_seed,
    restart_train_loader,
)
from plugins.data.check import DatasetCheckError  # noqa: E402
from plugins.guard import DivergenceError, LossMonitor  # noqa: E402

logger = logging.getLogger("plugins.lazyconfig_train_net")

#: Errors reported as one line (and exit status 1), with their kind.
_PROBLEMS = (
    (LazyConfigError, "invalid config"),
    (DatasetMissingError, "missing dataset"),
    (DatasetCheckError, "bad dataset"),
    (CheckpointLoadError, "bad checkpoint"),
    (DivergenceError, ""),  # its message starts with "training diverged"
)

#: The key of ``--coco-dataset`` datasets (error messages, their metadata's ``registered_by``).
COCO_DATASET_KEY = "--coco-dataset"


def load_config(args) -> DictConfig:
    """Register the ``--coco-dataset`` datasets, then load the config with its overrides.

    Every process calls it, so the datasets are registered wherever the loaders are built.

    Raises:
        LazyConfigError: a bad file, override or ``--coco-dataset`` entry.
    """
    try:
        register_coco_json_datasets(args.coco_dataset or (), key=COCO_DATASET_KEY)
    except ValueError as e:
        raise LazyConfigError(str(e)) from e
    return load_lazy_config(args.config_file, args.opts)


def _names(dataset_node) -> list[str]:
    names = dataset_node.names
    return [names] if isinstance(names, str) else list(names)


def dataset_names(cfg) -> tuple[list[str], list[str]]:
    """``(train, test)`` dataset names of ``dataloader.train`` / ``dataloader.test``."""
    return _names(cfg.dataloader.train.dataset), _names(cfg.dataloader.test.dataset)


def check_dataset_contents(cfg, eval_only: bool = False) -> None:
    """:func:`plugins.d2.data_check.check_named_datasets` on the datasets of ``dataloader``
    (only the test ones for ``eval_only``), against the model's class count
    (:func:`plugins.d2.data_check.lazy_num_classes`). Afterwards this process's loaders drop
    the bad boxes it reports.

    Raises:
        DatasetCheckError: a problem, in one line naming the dataset, file or key.
    """
    train_names, test_names = dataset_names(cfg)
    num_classes, key = lazy_num_classes(cfg)
    check_named_datasets([] if eval_only else train_names, test_names, num_classes, key)


def _guard_options(cfg) -> CfgNode:
    """``train.divergence_guard`` as the YAML node ``SOLVER.DIVERGENCE_GUARD`` (whose
    defaults fill the options a config leaves out).

    Raises:
        LazyConfigError: an unknown option or a bad value.
    """
    defaults = get_cfg()
    add_plugins_config(defaults)
    node = defaults.SOLVER.DIVERGENCE_GUARD
    for key, value in dict(cfg.train.get("divergence_guard") or {}).items():
        name, where = str(key).upper(), f"train.divergence_guard.{key}"
        if name not in node:
            options = ", ".join(k.lower() for k in node)
            raise LazyConfigError(f"{where}: unknown option (options: {options})")
        kind = type(node[name])
        if kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind:
            raise LazyConfigError(f"{where}: expected a {kind.__name__}, got {value!r}")
        node[name] = value
    try:
        LossMonitor(node.FACTOR, node.WARMUP, node.WINDOW)
    except ValueError as e:  # "factor: expected a number >= 0, got -1"
        raise LazyConfigError(f"train.divergence_guard.{e}") from e
    return node


def _ema_options(cfg) -> dict:
    ema = dict(cfg.train.get("ema") or {})
    return {
        "enabled": bool(ema.get("enabled", False)),
        "decay": float(ema.get("decay", 0.9998)),
        "warmup": bool(ema.get("warmup", True)),
    }


def _yacs_view(cfg) -> CfgNode:
    """The YAML keys :func:`plugins.d2.engine.load_checkpoint` reads, from ``train``."""
    ema = _ema_options(cfg)
    node = CfgNode({"ENABLED": ema["enabled"], "DECAY": ema["decay"], "WARMUP": ema["warmup"]})
    return CfgNode({"OUTPUT_DIR": cfg.train.output_dir, "MODEL": CfgNode({"EMA": node})})


def _ddp(model: nn.Module, cfg) -> nn.Module:
    options = dict(cfg.train.get("ddp") or {})
    if str(cfg.train.device).startswith("cpu"):
        options["device_ids"] = None  # torch refuses device ids for a CPU module
    return create_ddp_model(model, **options)


def build_model(cfg) -> nn.Module:
    """``instantiate(cfg.model)`` on ``train.device``."""
    model = instantiate(cfg.model)
    return model.to(cfg.train.device)


def do_test(cfg, model: nn.Module) -> dict:
    """Evaluate ``model`` with ``dataloader.test`` and ``dataloader.evaluator`` (nothing
    without an evaluator or test datasets)."""
    if "evaluator" not in cfg.dataloader or not dataset_names(cfg)[1]:
        return {}
    loader = instantiate(cfg.dataloader.test)  # first: prepares the dataset's metadata
    evaluator = instantiate(cfg.dataloader.evaluator)
    name = cfg.dataloader.evaluator.get("dataset_name")
    if isinstance(name, str):  # the boxes the dataset check dropped leave its ground truth too
        drop_bad_ground_truth(evaluator, name)
    results = inference_on_dataset(model, loader, evaluator)
    if comm.is_main_process():
        print_csv_format(results)
    return results


def _load_for_training(checkpointer: DetectionCheckpointer, path: str, resume: bool) -> bool:
    """Resume from the last checkpoint, or load ``path``'s model; ``True`` when resumed."""
    resumed = resume and checkpointer.has_checkpoint()
    target = checkpointer.get_checkpoint_file() if resumed else path
    if not target:
        return False
    try:
        checkpointer.load(target, checkpointables=None if resumed else [])
    except Exception as e:  # torch.load / pickle raise many types for a bad file
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointLoadError(
            f"cannot load checkpoint {target!r} (train.init_checkpoint or "
            f"output_dir/last_checkpoint): {reason}"
        ) from e
    return resumed


def do_train(args, cfg) -> dict:
    """Train as Detectron2's lazyconfig script, with EMA, final evaluation and publishing."""
    model = build_model(cfg)
    logger.info("Model:\n%s", model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    seed = resolve_seed(cfg.train.get("seed", -1))
    try:  # a loader that can start at any iteration (exact resume)
        train_loader = build_lazy_train_loader(cfg.dataloader.train, seed)
    except ValueError as e:  # e.g. a total batch size the processes cannot share
        raise LazyConfigError(str(e)) from e
    model = _ddp(model, cfg)
    trainer_cls = AMPTrainer if cfg.train.amp.enabled else SimpleTrainer
    trainer = trainer_cls(model, train_loader, optimizer)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    options = _ema_options(cfg)
    ema = ModelEMA(model, options["decay"], options["warmup"]) if options["enabled"] else None
    if ema is not None:
        checkpointer.add_checkpointable("ema", ema)
    results: dict = {}
    guard = None

    def evaluate() -> dict:
        if guard is not None and guard.stopped:
            return {}  # training failed: Detectron2 still calls this in after_train
        if ema is None:
            out = do_test(cfg, model)
        else:
            with ema.swapped_into(unwrap_model(model)):
                out = do_test(cfg, model)
        results.clear()
        results.update(out or {})
        return out

    main = comm.is_main_process()
    hook_list = [
        hook
        for hook in (
            hooks.IterationTimer(),
            EMAHook(ema, model) if ema is not None else None,  # before checkpoint and eval
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
            hooks.EvalHook(cfg.train.eval_period, evaluate),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if main
            else None,
        )
        if hook is not None
    ]
    # first: reseeds every iteration; its seed and data layout go into the checkpoints
    install_exact_resume(trainer, hook_list, seed, checkpointer)
    # after the LR scheduler, before the checkpointer, which it keeps from writing bad weights
    guard = install_divergence_guard(trainer, hook_list, _guard_options(cfg), checkpointer)
    trainer.register_hooks(hook_list)
    resumed = _load_for_training(checkpointer, cfg.train.init_checkpoint, args.resume)
    start_iter = trainer.iter + 1 if resumed else 0
    if resumed:  # the saved seed is back in the loader: continue at the resumed iteration
        restart_train_loader(trainer, start_iter)
    if ema is not None and not resumed:  # start the average from the (loaded) weights
        ema.state = ModelEMA(model, ema.decay, ema.warmup).state
        ema.num_updates = 0
    with divergence_as_error(trainer, guard):  # Detectron2's "Loss became infinite or NaN"
        trainer.train(start_iter, cfg.train.max_iter)

    publish = dict(cfg.train.get("publish") or {})
    # after a complete run Detectron2 leaves trainer.iter at max_iter
    if main and publish.get("enabled", False) and trainer.iter >= cfg.train.max_iter:
        train_names, test_names = dataset_names(cfg)
        publish_state(
            model,
            ema,
            out_dir=cfg.train.output_dir,
            name=publish.get("name", "model_final"),
            config=lazy_config_text(cfg),
            iteration=cfg.train.max_iter - 1,  # as the last checkpoint's "iteration"
            metrics=results,
            train_datasets=train_names,
            test_datasets=test_names,
        )
    return results


def main(args) -> dict:
    """One process of the run (called by ``launch``)."""
    cfg = load_config(args)
    default_setup(cfg, args)
    check_dataset_contents(cfg, args.eval_only)  # in this process too: its loaders drop bad boxes
    if args.eval_only:
        model = _ddp(build_model(cfg), cfg)
        load_checkpoint(_yacs_view(cfg), model, cfg.train.init_checkpoint)
        return do_test(cfg, model)
    return do_train(args, cfg)


def check_config(cfg, args) -> None:
    """Problems found before any process starts: datasets and their contents, checkpoint,
    AMP, divergence guard options, CPU launch.

    Raises:
        LazyConfigError, DatasetMissingError, DatasetCheckError, CheckpointLoadError: with
            one-line messages.
    """
    for key in ("dataloader", "optimizer", "lr_multiplier"):
        if key not in cfg and not (key != "dataloader" and args.eval_only):
            raise LazyConfigError(f"{args.config_file}: no `{key}` in the config")
    train_names, test_names = dataset_names(cfg)
    check_datasets(
        test_names if args.eval_only else train_names + test_names,
        hint=lazy_dataset_hint(args.config_file, lazy_num_classes(cfg)[1]),
        keys="dataloader.train.dataset.names / dataloader.test.dataset.names",
    )
    check_dataset_contents(cfg, args.eval_only)
    if args.eval_only and not cfg.train.init_checkpoint:
        raise CheckpointLoadError("--eval-only needs train.init_checkpoint=<checkpoint>")
    if cfg.train.amp.enabled and not torch.cuda.is_available():
        raise LazyConfigError(
            "train.amp.enabled: mixed precision (AMPTrainer) needs CUDA; "
            "set train.amp.enabled=False to train on the CPU"
        )
    _guard_options(cfg)
    problem = cpu_launch_problem(args.num_gpus, str(cfg.train.device))
    if problem:
        raise LazyConfigError(problem.replace("MODEL.DEVICE", "train.device"))


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv``, check the config, then launch ``main`` on every process."""
    parser = default_argument_parser()
    add_coco_dataset_argument(
        parser,
        "use it with dataloader.train.dataset.names=NAME / dataloader.test.dataset.names=NAME",
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args)
        check_config(cfg, args)
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except tuple(cls for cls, _ in _PROBLEMS) as e:
        kind = next(name for cls, name in _PROBLEMS if isinstance(e, cls))
        if comm.is_main_process():
            print(
                f"lazyconfig_train_net.py: error: {kind + ': ' if kind else ''}{e}", file=sys.stderr
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
