#!/usr/bin/env python
"""Train or evaluate the plugins' detectors (EfficientDet, RetinaNetPlus, CornerNet) with Detectron2.

Detectron2's usual command line (``detectron2.engine.default_argument_parser``)::

    python tools/train_net.py --config-file configs/demo/efficientdet_shapes.yaml
    python tools/train_net.py --config-file configs/efficientdet_d0.yaml --num-gpus 8
    python tools/train_net.py --config-file ... --resume                # continue OUTPUT_DIR
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file ... SOLVER.MAX_ITER 100 MODEL.DEVICE cpu
    python tools/train_net.py --config-file ... --num-gpus 2 MODEL.DEVICE cpu   # 2 gloo processes

Your own COCO-format data (``--coco-dataset NAME JSON IMAGE_ROOT``, repeatable; or the config
key ``DATASETS.COCO_JSON``), then name it in ``DATASETS.TRAIN`` / ``DATASETS.TEST``::

    python tools/train_net.py --config-file configs/demo/efficientdet_shapes.yaml \
        --coco-dataset my_train data/my/train.json data/my/train \
        --coco-dataset my_val data/my/val.json data/my/val \
        DATASETS.TRAIN "('my_train',)" DATASETS.TEST "('my_val',)" MODEL.EFFICIENTDET.NUM_CLASSES 3

Unknown config keys, missing datasets, unreadable checkpoints and a diverging loss
(``SOLVER.DIVERGENCE_GUARD``) stop the run with exit status 1 and a one-line
``train_net.py: error: ...`` message.
"""

from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import plugins.d2  # noqa: E402, F401  (first: stands in for a missing detectron2._C)

# isort: split
from detectron2.config import CfgNode, get_cfg  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from plugins.d2 import add_plugins_config  # noqa: E402
from plugins.d2.data_check import check_dataset_contents  # noqa: E402
from plugins.d2.datasets import (  # noqa: E402
    DatasetMissingError,
    add_coco_dataset_argument,
    check_datasets,
    register_config_datasets,
)
from plugins.d2.engine import CheckpointLoadError, Trainer, load_checkpoint  # noqa: E402
from plugins.d2.launch import cpu_launch_problem, launch  # noqa: E402
from plugins.d2.optim import check_clip_config  # noqa: E402
from plugins.data.check import DatasetCheckError  # noqa: E402
from plugins.guard import DivergenceError  # noqa: E402

logger = logging.getLogger("plugins.train_net")


class ConfigError(ValueError):
    """The config file or a command-line override is invalid."""


def load_config(
    config_file: str, opts: list[str], coco_datasets: list[list[str]] | None = None
) -> CfgNode:
    """Detectron2 defaults + plugin keys + ``config_file`` + ``KEY VALUE`` overrides, frozen.

    ``coco_datasets`` (``--coco-dataset NAME JSON IMAGE_ROOT`` triples) are appended to
    ``DATASETS.COCO_JSON``, whose datasets are then registered.

    Raises:
        ConfigError: unknown key, bad value or unreadable file, with the offending key named.
    """
    cfg = get_cfg()
    add_plugins_config(cfg)
    for where, merge, arg in (
        (config_file, cfg.merge_from_file, config_file),
        ("command line", cfg.merge_from_list, opts),
    ):
        if not arg:
            continue
        try:
            merge(arg)
        except (KeyError, AssertionError, ValueError, TypeError, OSError) as e:
            msg = str(e.args[0]) if e.args else type(e).__name__
            if "Non-existent" in msg:  # yacs: "Non-existent (config) key: A.B.C"
                msg = f"unknown config key {msg.rsplit(':', 1)[-1].strip()}"
            raise ConfigError(f"{where}: {msg}") from e
    if coco_datasets:
        cfg.DATASETS.COCO_JSON = list(cfg.DATASETS.COCO_JSON) + [list(t) for t in coco_datasets]
    try:
        register_config_datasets(cfg)
        check_clip_config(cfg.SOLVER.CLIP_GRADIENTS)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    cfg.freeze()
    return cfg


def main(args) -> dict | None:
    """One process of the run (called by ``launch``)."""
    cfg = load_config(args.config_file, args.opts, args.coco_dataset)
    default_setup(cfg, args)
    if args.eval_only:
        check_dataset_contents(cfg)  # in this process too: the test loaders drop bad boxes
        model = Trainer.build_model(cfg)
        load_checkpoint(cfg, model, cfg.MODEL.WEIGHTS)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv``, check config and datasets, then launch ``main`` on every process."""
    parser = default_argument_parser()
    add_coco_dataset_argument(
        parser, "name it in DATASETS.TRAIN / DATASETS.TEST (adds to DATASETS.COCO_JSON)"
    )
    args = parser.parse_args(argv)
    try:
        # fail before spawning workers: bad keys and missing datasets are found here
        cfg = load_config(args.config_file, args.opts, args.coco_dataset)
        check_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST), cfg)
        check_dataset_contents(cfg)
        if args.eval_only and not cfg.MODEL.WEIGHTS:
            raise CheckpointLoadError("--eval-only needs MODEL.WEIGHTS <checkpoint>")
        problem = cpu_launch_problem(args.num_gpus, cfg.MODEL.DEVICE)
        if problem:
            raise ConfigError(problem)
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (
        ConfigError,
        DatasetMissingError,
        DatasetCheckError,
        CheckpointLoadError,
        DivergenceError,
    ) as e:
        kind = {
            ConfigError: "invalid config",
            DatasetMissingError: "missing dataset",
            DatasetCheckError: "bad dataset",
            CheckpointLoadError: "bad checkpoint",
            DivergenceError: "",  # its message starts with "training diverged"
        }[type(e)]
        if comm.is_main_process():
            print(f"train_net.py: error: {kind + ': ' if kind else ''}{e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
