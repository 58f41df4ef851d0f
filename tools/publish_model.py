#!/usr/bin/env python
"""Publish a checkpoint as a model-zoo file: the evaluated weights, metadata, sha256 in the name.

Works for Detectron2 (YAML or LazyConfig) and MMDetection checkpoints of the plugins::

    python tools/publish_model.py configs/demo/efficientdet_shapes.yaml output/demo/model_final.pth
    python tools/publish_model.py configs/lazy/efficientdet_d0.py output/model_0089999.pth
    python tools/publish_model.py configs/mmdet/demo/efficientdet_shapes.py work_dirs/x/epoch_25.pth
    python tools/publish_model.py CONFIG CHECKPOINT zoo/d0_coco.pth  # -> zoo/d0_coco-<sha8>.pth

The framework comes from the checkpoint (``"model"``: Detectron2, ``"state_dict"``:
MMDetection) and must agree with the config, whose model must accept the weights (same keys
and shapes). The output holds the weights that evaluation uses, the EMA ones when the run kept
an average (``--no-ema``: the trained ones), under the framework's usual key, plus ``"meta"``
(config text, iteration, the evaluation results found in the run's logs, EMA facts, class
names, versions, date), and is named ``<OUT without .pth>-<sha256[:8]>.pth`` (default: beside
the checkpoint, named after it). Nothing is ever overwritten. Checkpoints are read with
``weights_only=True`` and the plugins' allow-list. A problem ends with one line
``publish_model.py: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys

TOOLS = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, osp.dirname(TOOLS))  # the repository root (without `pip install -e .`)
sys.path.insert(0, TOOLS)  # the shared config loaders of train_net.py / mm_train.py


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="publish_model.py", description=__doc__.split("\n\n")[0].strip()
    )
    parser.add_argument("config", help="the config the checkpoint was trained with")
    parser.add_argument("checkpoint", help="checkpoint file (Detectron2 or mmengine)")
    parser.add_argument(
        "out",
        nargs="?",
        help="output file name; the sha256 prefix is added before .pth "
        "(default: beside the checkpoint, with its name)",
    )
    parser.add_argument(
        "--no-ema", action="store_true", help="publish the trained weights, not their EMA"
    )
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides (yacs keys for YAML configs, dotted keys otherwise)",
    )
    return parser.parse_args(argv)


def _fail(message: str) -> int:
    print(f"publish_model.py: error: {message}", file=sys.stderr, flush=True)
    return 2


def _out_location(args: argparse.Namespace) -> tuple[str, str]:
    if args.out:
        stem = osp.basename(args.out)
        stem = stem[: -len(".pth")] if stem.endswith(".pth") else stem
        return osp.dirname(args.out) or ".", stem
    from plugins.d2.publish import default_stem

    return osp.dirname(osp.abspath(args.checkpoint)), default_stem(args.checkpoint)


def _split_options(options: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--cfg-options: expected KEY=VALUE, got {item!r}")
        pairs.append((key, value))
    return pairs


def _meta_model(build):
    import torch

    with torch.device("meta"):
        return build()


def publish_d2(args: argparse.Namespace, checkpoint: dict) -> str:
    """Detectron2: YAML (``train_net.load_config``) or LazyConfig (``.py``) config."""
    from plugins.d2.publish import publish_checkpoint

    out_dir, stem = _out_location(args)
    options = _split_options(args.cfg_options)
    if args.config.endswith(".py"):
        from detectron2.config import instantiate

        from plugins.d2.lazy import lazy_config_text, load_lazy_config

        cfg = load_lazy_config(args.config, [f"{k}={v}" for k, v in options])
        model = _meta_model(lambda: instantiate(cfg.model))
        use_ema = bool(cfg.train.get("ema", {}).get("enabled", False))
        config_text = lazy_config_text(cfg)
        train, test = cfg.dataloader.train.dataset.names, cfg.dataloader.test.dataset.names
    else:
        from detectron2.modeling import build_model
        from train_net import load_config

        cfg = load_config(args.config, [x for pair in options for x in pair])
        meta_cfg = cfg.clone()
        meta_cfg.defrost()
        meta_cfg.MODEL.DEVICE = "meta"
        model = _meta_model(lambda: build_model(meta_cfg))
        use_ema = bool(cfg.MODEL.EMA.ENABLED)
        config_text = cfg.dump()
        train, test = cfg.DATASETS.TRAIN, cfg.DATASETS.TEST
    as_list = [train] if isinstance(train, str) else list(train)
    test_list = [test] if isinstance(test, str) else list(test)
    return publish_checkpoint(
        checkpoint,
        args.checkpoint,
        model=model,
        config=config_text,
        use_ema=use_ema and not args.no_ema,
        train_datasets=as_list,
        test_datasets=test_list,
        out_dir=out_dir,
        name=stem,
    )


def _dataset_meta(cfg) -> dict | None:
    """``metainfo`` of the training dataset: the config's, else the dataset class's."""
    from mmdet.registry import DATASETS

    dataset = (cfg.get("train_dataloader") or {}).get("dataset") or {}
    while isinstance(dataset.get("dataset"), dict):  # dataset wrappers
        dataset = dataset["dataset"]
    if dataset.get("metainfo"):
        return dict(dataset["metainfo"])
    cls = DATASETS.get(dataset.get("type")) if isinstance(dataset.get("type"), str) else None
    info = getattr(cls, "METAINFO", None)
    return dict(info) if info else None


def publish_mm(args: argparse.Namespace, checkpoint: dict) -> str:
    """MMDetection: the config through ``mm_train.load_config`` and its model-type check."""
    from mm_train import check_model_types, load_config
    from mmdet.registry import MODELS
    from mmengine.config import DictAction
    from mmengine.registry import init_default_scope

    from plugins.mm.publish import publish_checkpoint

    options = {k: DictAction._parse_iterable(v) for k, v in _split_options(args.cfg_options)}
    cfg = load_config(args.config, options)
    check_model_types(cfg, args.config)
    init_default_scope(cfg.get("default_scope", "mmdet"))
    model = _meta_model(lambda: MODELS.build(cfg.model))
    out_dir, stem = _out_location(args)
    return publish_checkpoint(
        checkpoint,
        args.checkpoint,
        model=model,
        config=cfg.pretty_text,
        use_ema=not args.no_ema,
        dataset_meta=_dataset_meta(cfg),
        out_dir=out_dir,
        name=stem,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    if not osp.isfile(args.config):
        return _fail(f"config file not found: {args.config}")
    yaml = args.config.endswith((".yaml", ".yml"))
    import plugins.d2  # noqa: F401  (allow-list and registrations; before detectron2.layers)

    if not yaml:
        import plugins.mm  # noqa: F401  (allow-list for mmengine checkpoints)
    from plugins.publish import PublishError, sha256_of
    from plugins.safe_load import CheckpointError, load_checkpoint_file

    problems: tuple[type[BaseException], ...] = (CheckpointError, PublishError, ValueError)
    try:
        checkpoint = load_checkpoint_file(args.checkpoint)
        if not isinstance(checkpoint, dict):
            raise PublishError(f"{args.checkpoint}: expected a checkpoint dict")
        if "model" in checkpoint:
            framework = "detectron2"
        elif "state_dict" in checkpoint:
            framework = "mmdetection"
        else:
            raise PublishError(
                f"{args.checkpoint}: neither a Detectron2 ('model') nor an mmengine "
                f"('state_dict') checkpoint; keys {sorted(checkpoint)[:8]}"
            )
        if framework == "mmdetection" and yaml:
            raise PublishError(
                f"{args.checkpoint} is an mmengine checkpoint but {args.config} is a "
                "Detectron2 YAML config"
            )
        if framework == "detectron2":
            path = publish_d2(args, checkpoint)
        else:
            from mm_train import ConfigProblem

            problems += (ConfigProblem,)
            path = publish_mm(args, checkpoint)
    except problems as exc:
        return _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
    print(f"published {path} ({framework}, sha256 {sha256_of(path)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
