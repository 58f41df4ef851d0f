"""Train a detector with MMDetection 3.x and the plugins' components.

Same command line as mmdet's ``tools/train.py``::

    python tools/mm_train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--auto-scale-lr] [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Distributed (CPU gloo or GPU nccl) through mmengine + torchrun::

    python -m torch.distributed.run --nproc_per_node 2 tools/mm_train.py CONFIG --launcher pytorch

Before building the runner the config is checked, and the script exits with status 2 and a
message naming the problem for: an unknown registry type anywhere in the config or a value of
the wrong type (one line each, with close matches: :mod:`plugins.mm.config_check`), a dataset
root that does not exist (with how to use the embedded Shapes dataset instead), and a missing
or corrupt checkpoint. Training adds the plugins' divergence guard and exact-resume hooks
(:mod:`plugins.mm.hooks`) when the config does not list them; a diverging run stops with one
``mm_train: error: training diverged ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from collections.abc import Iterator

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:  # `python tools/mm_train.py` without `pip install -e .`
    sys.path.insert(0, REPO_ROOT)

#: Registered detector type -> its CPU demo config on the embedded Shapes dataset.
DEMO_CONFIGS = {
    "PluginsEfficientDet": "configs/mmdet/demo/efficientdet_shapes.py",
    "RetinaNet": "configs/mmdet/demo/retinanet_shapes.py",
    "CornerNet": "configs/mmdet/demo/cornernet_shapes.py",
}


def shapes_hint(cfg) -> str:
    """Commands that work without the missing data, for the detector of ``cfg``.

    The architecture's demo config (its datasets are the generated Shapes splits, sized for a
    CPU) and the own-data config, whose one block sets data paths, classes and ``num_classes``
    (re-assigning a top-level ``data_root`` with --cfg-options would not reach the datasets).
    """
    model_type = (cfg.get("model") or {}).get("type")
    demo = DEMO_CONFIGS.get(model_type, "configs/mmdet/demo/efficientdet_shapes.py")
    own = "configs/mmdet/own_data/efficientdet_d0_coco.py"
    if model_type == "PluginsEfficientDet":
        own = f"edit the dataset block of {own} (or efficientdet_demo_coco.py, the CPU recipe)"
        own += " and train that config"
    else:
        own = (
            "set each dataset's data_root, ann_file, data_prefix and metainfo.classes and the "
            f"head's num_classes in one config, as {own} does"
        )
    return (
        f"To train on the embedded Shapes dataset instead (generated on first use), run: "
        f"python tools/mm_train.py {demo} . For your own COCO-format data, {own}."
    )


class ConfigProblem(Exception):
    """A problem with the config or the files it names, reported without a traceback."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of mmdet's ``tools/train.py``."""
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description="Train a detector (MMDetection + plugins)")
    parser.add_argument("config", help="train config file path")
    parser.add_argument("--work-dir", help="directory for logs and checkpoints")
    parser.add_argument(
        "--amp", action="store_true", help="automatic mixed precision (mmengine AmpOptimWrapper)"
    )
    parser.add_argument(
        "--auto-scale-lr",
        action="store_true",
        help="scale the lr by the total batch size / auto_scale_lr.base_batch_size",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        type=str,
        const="auto",
        help="resume from this checkpoint, or (no value) from the latest one in the work dir",
    )
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        help="override config entries, KEY=VALUE (e.g. train_cfg.max_epochs=2)",
    )
    parser.add_argument(
        "--launcher",
        choices=["none", "pytorch", "slurm", "mpi"],
        default="none",
        help="job launcher",
    )
    # torch.distributed.launch passes --local-rank (torch >= 2) or --local_rank
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


# ------------------------------------------------------------------------------------------
# checks shared with tools/mm_test.py


def load_config(path: str, cfg_options: dict | None = None):
    """Load a config (importing its ``custom_imports``) and merge ``cfg_options``.

    Raises:
        ConfigProblem: the file is missing or its custom imports fail.
    """
    from mmengine.config import Config

    if not osp.isfile(path):
        raise ConfigProblem(f"config file not found: {path}")
    try:
        cfg = Config.fromfile(path)
    except ImportError as exc:
        raise ConfigProblem(f"config {path}: a module in custom_imports failed: {exc}") from exc
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def check_model_types(cfg, config_path: str, mode: str = "train") -> None:
    """Every registry ``type`` (model, losses, datasets, transforms, optimizer, schedulers,
    hooks, metrics, nms, ...) and the basic values of the config, before anything is built
    (:func:`plugins.mm.config_check.check_config`; ``mode="test"`` checks what testing uses).

    Raises:
        ConfigProblem: one line per problem: key path, bad value, close registered names.
    """
    from plugins.mm.config_check import check_config

    problems = check_config(cfg, mode)
    if problems:
        raise ConfigProblem("\n".join(f"config {config_path}: {p}" for p in problems))


def _datasets(node, where: str) -> Iterator[tuple[str, dict]]:
    """Dataset configs inside a dataloader's ``dataset`` (through wrappers)."""
    from plugins.mm.data_check import iter_dataset_configs

    return iter_dataset_configs(node, where)


def _is_generated_dataset(type_name) -> bool:
    from mmdet.registry import DATASETS

    from plugins.mm.datasets import PluginsShapesDataset

    cls = DATASETS.get(type_name) if isinstance(type_name, str) else type_name
    return isinstance(cls, type) and issubclass(cls, PluginsShapesDataset)


def _check_generated_root(ds: dict, where: str, config_path: str) -> None:
    """A generated (Shapes) dataset's ``data_root`` must be new, empty or the generator's own."""
    from plugins.data.shapes import ShapesRootError, check_shapes_root

    root = ds.get("data_root")
    if root is None:
        return
    try:
        check_shapes_root(root)
    except ShapesRootError as exc:
        raise ConfigProblem(f"config {config_path}: {where}.data_root: {exc}") from exc


def check_data(
    cfg, config_path: str, loaders: tuple[str, ...], evaluators: tuple[str, ...]
) -> None:
    """The data roots, annotation files and evaluator annotation files must exist.

    Datasets of type ``PluginsShapesDataset`` are generated on first use and skipped. Then
    the contents of every COCO dataset are checked and the bad boxes dropped
    (:func:`plugins.mm.data_check.prepare_datasets`).

    Raises:
        ConfigProblem: names the missing path, the config key and the Shapes alternative.
    """
    for loader in loaders:
        dl = cfg.get(loader)
        if not isinstance(dl, dict):
            continue
        for where, ds in _datasets(dl.get("dataset"), f"{loader}.dataset"):
            if _is_generated_dataset(ds.get("type")):
                _check_generated_root(ds, where, config_path)
                continue
            root = ds.get("data_root")
            if root and not osp.isdir(root):
                raise ConfigProblem(
                    f"config {config_path}: data root {root!r} ({where}.data_root) does not "
                    f"exist (resolved: {osp.abspath(root)}). Put the dataset there or point to "
                    f"it with --cfg-options {where}.data_root=/path/to/data/. {shapes_hint(cfg)}"
                )
            ann = ds.get("ann_file")
            if ann and "dataset" not in ds and "datasets" not in ds:
                path = ann if osp.isabs(ann) or not root else osp.join(root, ann)
                if not osp.isfile(path):
                    raise ConfigProblem(
                        f"config {config_path}: annotation file {path!r} ({where}.ann_file) "
                        f"does not exist. {shapes_hint(cfg)}"
                    )
    for key in evaluators:
        items = cfg.get(key)
        items = [items] if isinstance(items, dict) else list(items or [])
        for i, ev in enumerate(items):
            ann = ev.get("ann_file") if isinstance(ev, dict) else None
            if ann and not osp.isfile(ann):
                where = key if len(items) == 1 else f"{key}[{i}]"
                raise ConfigProblem(
                    f"config {config_path}: evaluator annotation file {ann!r} "
                    f"({where}.ann_file) does not exist. {shapes_hint(cfg)}"
                )
    from plugins.data.check import DatasetCheckError
    from plugins.mm.data_check import prepare_datasets

    try:  # json, ids, categories, images, boxes, num_classes; bad boxes dropped on load
        prepare_datasets(cfg, loaders, evaluators)
    except DatasetCheckError as exc:
        raise ConfigProblem(f"config {config_path}: {exc}") from exc


def check_checkpoint(path: str, what: str = "checkpoint") -> None:
    """The checkpoint must exist and be a checkpoint with weights, read without running code.

    It is read as every load of ours is: ``weights_only=True`` with the allow-list of
    :mod:`plugins.safe_load` (``import plugins.mm`` registers mmengine's types).

    Raises:
        ConfigProblem: missing, unreadable or corrupt file, a file needing types outside the
            allow-list (refused, not unpickled), or no tensors in it.
    """
    import torch

    import plugins.mm.checkpoint  # noqa: F401  (allow-list of mmengine's checkpoint types)
    from plugins.safe_load import CheckpointError, load_checkpoint_file

    if not osp.isfile(path):
        raise ConfigProblem(f"{what} not found: {path}")
    try:
        ckpt = load_checkpoint_file(path)
    except CheckpointError as exc:
        raise ConfigProblem(f"{what}: {exc}") from exc
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise ConfigProblem(f"{what} {path} holds no model weights (no tensors in its state dict)")


def setup_distributed_on_cpu(cfg, launcher: str) -> None:
    """Let a CPU-only machine run ``--launcher pytorch``: gloo process group, no device ids.

    mmengine's pytorch launcher pins a CUDA device and mmdet's default runtime asks for nccl;
    without CUDA both fail, so the gloo group is created here (mmengine then reuses it) and the
    DDP wrapper gets ``device_ids=None``, as CPU modules need.
    """
    import torch
    import torch.distributed as dist

    if launcher != "pytorch" or torch.cuda.is_available():
        return
    backend = cfg.get("env_cfg", {}).get("dist_cfg", {}).get("backend", "gloo")
    if backend != "gloo":
        print(f"mm_train: no CUDA device, using the gloo backend instead of {backend!r}")
        cfg.env_cfg.dist_cfg.backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    wrapper = dict(type="MMDistributedDataParallel", device_ids=None)
    wrapper.update(cfg.get("model_wrapper_cfg") or {})
    wrapper["device_ids"] = None
    cfg.model_wrapper_cfg = wrapper


def fail(prog: str, message: str) -> None:
    """Print ``prog: error: <line>`` for each line of ``message`` to stderr, exit with status 2."""
    for line in message.splitlines() or [""]:
        print(f"{prog}: error: {line}", file=sys.stderr, flush=True)
    sys.exit(2)


# ------------------------------------------------------------------------------------------


def build_train_config(args: argparse.Namespace):
    """Load the config and apply the command line (work dir, AMP, lr scaling, resume).

    Raises:
        ConfigProblem: see :func:`check_model_types`, :func:`check_data`,
            :func:`check_checkpoint`.
    """
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        if cfg.optim_wrapper.get("type", "OptimWrapper") == "AmpOptimWrapper":
            print("mm_train: the config already uses AmpOptimWrapper")
        else:
            cfg.optim_wrapper.type = "AmpOptimWrapper"
            cfg.optim_wrapper.loss_scale = "dynamic"

    if args.auto_scale_lr:
        scale = cfg.get("auto_scale_lr")
        if not scale or "base_batch_size" not in scale:
            raise ConfigProblem(
                f"config {args.config}: --auto-scale-lr needs "
                "auto_scale_lr = dict(enable=False, base_batch_size=N) in the config"
            )
        cfg.auto_scale_lr.enable = True

    if args.resume == "auto":
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    from plugins.mm.hooks import add_missing_hooks

    add_missing_hooks(cfg)
    check_model_types(cfg, args.config)
    validate = cfg.get("val_cfg") is not None and cfg.get("val_dataloader") is not None
    check_data(
        cfg,
        args.config,
        ("train_dataloader", "val_dataloader") if validate else ("train_dataloader",),
        ("val_evaluator",) if validate else (),
    )
    if cfg.get("load_from"):
        what = "checkpoint to resume from" if cfg.get("resume") else "checkpoint (load_from)"
        check_checkpoint(cfg.load_from, what)
    return cfg


def run_tool(prog: str, args: argparse.Namespace, build_config, action: str) -> None:
    """Shared body of mm_train / mm_test: build and check the config (a problem exits with
    a message), set up CPU distribution, build mmengine's runner, call ``runner.<action>()``."""
    from mmdet.utils import setup_cache_size_limit_of_dynamo
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from plugins.convert.match import WrongCheckpointError
    from plugins.guard import DivergenceError
    from plugins.safe_load import CheckpointError

    setup_cache_size_limit_of_dynamo()
    try:
        cfg = build_config(args)
    except ConfigProblem as exc:
        fail(prog, str(exc))
    setup_distributed_on_cpu(cfg, args.launcher)
    runner = Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
    try:
        getattr(runner, action)()
    except (CheckpointError, WrongCheckpointError) as exc:  # raised before the first iteration
        fail(prog, str(exc))
    except DivergenceError as exc:  # plugins.mm.hooks.PluginsDivergenceGuardHook
        fail(prog, str(exc))


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    run_tool("mm_train", parse_args(argv), build_train_config, "train")


if __name__ == "__main__":
    main()
