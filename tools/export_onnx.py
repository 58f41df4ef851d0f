#!/usr/bin/env python
"""Export a trained detector (Detectron2 or MMDetection config + checkpoint) to one ONNX graph.

The graph takes ``uint8`` RGB images ``(B, 3, H, W)`` at one fixed size and holds everything up to
the final detections: normalisation, the network, box decoding against anchors baked in as
constants (or CornerNet's corner decoding), per-class NMS (ONNX ``NonMaxSuppression``) and a
fixed-size top-k. Outputs: ``boxes (B, K, 4)`` xyxy in input pixels, ``scores (B, K)``,
``labels (B, K)`` (``-1`` padding), ``num_detections (B,)``. See :mod:`plugins.export`.

Usage::

    python tools/export_onnx.py configs/demo/efficientdet_shapes.yaml output/model_final.pth \\
        --output effdet.onnx
    python tools/export_onnx.py configs/mmdet/efficientdet_d0.py work_dirs/d0/epoch_300.pth \\
        --output d0.onnx --size 512 --batch 8

The config type is told from the file: ``.yaml`` / ``.yml`` is Detectron2, ``.py`` is
MMDetection. The size defaults to the config's test size (rounded up to the model's padding
multiple). Soft-NMS is not an ONNX operator: a model configured with soft-NMS is exported with
hard NMS at the config's IoU threshold (``--nms-iou`` to choose another), and the tool says so.

Bad input (unknown config type, a checkpoint that does not fit the config, a size the model
cannot take, an existing output file this tool did not write) ends with one
``export_onnx.py: error: ...`` line and exit status 1; the output is written to a temporary file
in the same folder and renamed into place only when the graph has been checked in onnxruntime.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _path in (str(HERE.parent), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from plugins.export.onnx import OPSET, PRODUCER, ExportError, export_onnx  # noqa: E402

__all__ = [
    "ToolError",
    "LoadedModel",
    "config_framework",
    "load_model",
    "main",
    "model_parser",
    "run_cli",
]

CONFIG_TYPES = {".yaml": "d2", ".yml": "d2", ".py": "mm"}


class ToolError(Exception):
    """A problem with the user's input; printed as one line, exit status 1."""


@dataclass
class LoadedModel:
    """A built model with its weights, as the tools need it.

    Attributes:
        framework: ``"d2"`` or ``"mm"``.
        family: ``"efficientdet"``, ``"retinanet"`` or ``"cornernet"``.
        model: the framework's model (eval mode, on the requested device).
        cfg: the framework's config object.
        class_names: class names, in label order (``"0"``, ``"1"``, ... when neither the
            checkpoint nor the config's dataset names them).
        config: path of the config file.
        checkpoint: path of the checkpoint.
    """

    framework: str
    family: str
    model: object
    cfg: object
    class_names: tuple[str, ...]
    config: str
    checkpoint: str


def config_framework(config: str) -> str:
    """``"d2"`` for a Detectron2 YAML config, ``"mm"`` for an MMDetection Python config.

    Raises:
        ToolError: missing file or an unknown config type.
    """
    path = Path(config)
    if not path.is_file():
        raise ToolError(f"config: {config} does not exist or is not a file")
    kind = CONFIG_TYPES.get(path.suffix.lower())
    if kind is None:
        raise ToolError(
            f"config: unknown config type {path.suffix or '(no extension)'!r} of {config}: "
            "expected a Detectron2 YAML config (.yaml, .yml) or an MMDetection Python config (.py)"
        )
    return kind


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0]


def _require_complete_fit(model, checkpoint: str, framework: str) -> None:
    """A deployed model must get every tensor from the checkpoint, and use all of it."""
    from plugins.convert.match import check_weights_match
    from plugins.safe_load import load_checkpoint_file

    data = load_checkpoint_file(checkpoint)
    if not isinstance(data, dict):
        raise ToolError(f"checkpoint: {checkpoint} holds no state dict")
    if framework == "d2":
        if data.get("matching_heuristics", False):
            return  # a model-zoo file: Detectron2 renames its keys while loading
        state = data.get("model", data)
    else:
        state = data.get("state_dict", data)
    if not isinstance(state, dict):
        raise ToolError(f"checkpoint: {checkpoint} holds no state dict")
    shapes = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    if shapes and all(k.startswith("module.") for k in shapes):
        shapes = {k[len("module.") :]: v for k, v in shapes.items()}
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    report = check_weights_match(mine, shapes, checkpoint, framework)  # raises: another model
    if not report.is_complete:
        raise ToolError(
            f"checkpoint: {checkpoint} does not fit the config's model: {report.summary(checkpoint)}"
        )


def _load_d2(config: str, checkpoint: str, device: str) -> LoadedModel:
    import plugins.d2  # noqa: F401  (first: the detectron2._C stand-in)

    # isort: split
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model
    from train_net import ConfigError, load_config

    from plugins.d2.engine import CheckpointLoadError, load_checkpoint
    from plugins.d2.export import family_of

    try:
        cfg = load_config(config, ["MODEL.DEVICE", device])
    except ConfigError as e:
        raise ToolError(f"config: {e}") from e
    model = build_model(cfg)
    family = family_of(model)
    _require_complete_fit(model, checkpoint, "d2")
    try:
        load_checkpoint(cfg, model, checkpoint)
    except CheckpointLoadError as e:
        raise ToolError(f"checkpoint: {e}") from e
    names = ()
    if cfg.DATASETS.TEST:
        names = tuple(MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_classes", ()))
    if len(names) != model.num_classes:  # no dataset metadata: numbered classes
        names = tuple(str(i) for i in range(model.num_classes))
    return LoadedModel("d2", family, model.eval(), cfg, names, config, checkpoint)


def _load_mm(config: str, checkpoint: str, device: str) -> LoadedModel:
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    try:
        cfg = Config.fromfile(config)  # imports plugins.mm through custom_imports
    except Exception as e:  # mmengine raises many types for a bad file
        raise ToolError(f"config: cannot read {config}: {_first_line(e)}") from e
    init_default_scope(cfg.get("default_scope", "mmdet"))
    import plugins.mm  # noqa: F401  (registrations and the safe checkpoint loader)

    # isort: split
    from mmdet.registry import DATASETS, MODELS
    from mmengine.runner import load_checkpoint

    from plugins.mm.export import family_of

    try:
        model = MODELS.build(cfg.model)
    except Exception as e:  # a bad model section
        raise ToolError(f"config: cannot build the model of {config}: {_first_line(e)}") from e
    family = family_of(model)
    _require_complete_fit(model, checkpoint, "mm")
    ckpt = load_checkpoint(model, checkpoint, map_location="cpu")
    meta = ckpt.get("meta", {}) if isinstance(ckpt, dict) else {}
    names = tuple((meta.get("dataset_meta") or {}).get("classes", ()))
    if not names:
        dataset = cfg.get("test_dataloader", {}).get("dataset", {})
        names = tuple((dataset.get("metainfo") or {}).get("classes", ()))
        if not names and dataset.get("type"):
            dataset_cls = DATASETS.get(dataset["type"])
            names = tuple(getattr(dataset_cls, "METAINFO", {}).get("classes", ()))
    if len(names) != model.bbox_head.num_classes:  # no dataset metadata: numbered classes
        names = tuple(str(i) for i in range(model.bbox_head.num_classes))
    model.cfg = cfg
    model.dataset_meta = {"classes": names}
    return LoadedModel("mm", family, model.to(device).eval(), cfg, names, config, checkpoint)


def load_model(config: str, checkpoint: str, device: str = "cpu") -> LoadedModel:
    """Build the config's model and load the checkpoint with the framework's own loader.

    Raises:
        ToolError: unknown config type, bad config, unreadable checkpoint or one that does
            not fit the model (every model tensor must come from the file), unsupported model.
    """
    from plugins.convert.match import WrongCheckpointError
    from plugins.safe_load import CheckpointError

    framework = config_framework(config)
    if not Path(checkpoint).is_file():
        raise ToolError(f"checkpoint: {checkpoint} does not exist or is not a file")
    try:
        if framework == "d2":
            return _load_d2(config, checkpoint, device)
        return _load_mm(config, checkpoint, device)
    except (CheckpointError, WrongCheckpointError) as e:
        raise ToolError(f"checkpoint: {_first_line(e)}") from e
    except ValueError as e:  # unsupported architecture and the like, named by the adapters
        raise ToolError(_first_line(e)) from e


def default_size(loaded: LoadedModel) -> int:
    """A square size holding the config's test-time resized images, padded as the model pads."""
    cfg = loaded.cfg
    if loaded.framework == "d2":
        from plugins.d2.export import size_divisibility

        side = max(max(cfg.INPUT.MIN_SIZE_TEST, 0), cfg.INPUT.MAX_SIZE_TEST)
    else:
        from plugins.mm.export import size_divisibility

        side = 0
        pipeline = cfg.get("test_dataloader", {}).get("dataset", {}).get("pipeline", [])
        for step in pipeline:
            if "Resize" in str(step.get("type", "")) and step.get("scale") is not None:
                scale = step["scale"]
                side = max(scale) if isinstance(scale, (list, tuple)) else int(scale)
        if not side:
            raise ToolError(f"--size: {loaded.config} has no test Resize step; give --size")
    div = size_divisibility(loaded.model)
    return int(math.ceil(side / div) * div)


def exportable(loaded: LoadedModel, size: tuple[int, int], nms_iou: float | None, dtype: str):
    """``(ExportableDetector, info)`` of a loaded model (the framework adapter's translation)."""
    if loaded.framework == "d2":
        from plugins.d2.export import exportable_detector
    else:
        from plugins.mm.export import exportable_detector
    try:
        return exportable_detector(loaded.model, size, nms_iou, dtype)
    except ValueError as e:
        raise ToolError(_first_line(e)) from e


def is_our_onnx(path: Path) -> bool:
    """Whether ``path`` is an ONNX file this tool wrote (its metadata names our producer)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not an ONNX file at all
        return False
    return any(p.key == "producer" and p.value == PRODUCER for p in proto.metadata_props)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the two positional arguments of the tools: config, checkpoint."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("config", help="Detectron2 .yaml or MMDetection .py config")
    parser.add_argument("checkpoint", help="checkpoint of that config")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = model_parser(
        "export_onnx.py",
        "Export a detector (config + checkpoint) to a fixed-size ONNX graph with "
        "preprocessing, decoding and NMS inside.",
    )
    parser.add_argument("--output", "-o", required=True, help="the .onnx file to write")
    parser.add_argument(
        "--size",
        type=int,
        nargs="+",
        metavar="PX",
        help="input size: one value (square) or H W; default: the config's test size",
    )
    parser.add_argument("--batch", type=int, default=1, help="batch size of the graph (default 1)")
    parser.add_argument(
        "--nms-iou",
        type=float,
        default=None,
        help="IoU threshold of the exported hard NMS (default: the config's)",
    )
    parser.add_argument(
        "--input-dtype",
        choices=("uint8", "float32"),
        default="uint8",
        help="input element type, values 0-255 either way (default uint8)",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> Path:
    """Export as ``args`` asks; returns the written path."""
    output = Path(args.output)
    if output.suffix.lower() != ".onnx":
        raise ToolError(f"--output: expected a .onnx file name, got {args.output}")
    if not output.parent.is_dir():
        raise ToolError(f"--output: folder {str(output.parent)!r} does not exist")
    if output.exists() and not is_our_onnx(output):
        raise ToolError(
            f"--output: {output} exists and was not written by this tool; choose another name"
        )
    if args.batch < 1:
        raise ToolError(f"--batch: expected a positive int, got {args.batch}")
    if args.size is not None and len(args.size) not in (1, 2):
        raise ToolError(f"--size: expected one value or H W, got {args.size}")
    loaded = load_model(args.config, args.checkpoint, "cpu")
    side = args.size or [default_size(loaded)]
    size = (side[0], side[-1])
    detector, info = exportable(loaded, size, args.nms_iou, args.input_dtype)
    metadata = {
        "framework": {"d2": "detectron2", "mm": "mmdetection"}[loaded.framework],
        "family": info["family"],
        "config": os.path.abspath(loaded.config),
        "checkpoint": os.path.abspath(loaded.checkpoint),
        "checkpoint_sha256": _sha256(loaded.checkpoint),
        "class_names": list(loaded.class_names),
        "model_nms": info["model_nms"],
        "nms": "none (the config runs none)"
        if info["nms_iou_threshold"] is None
        else f"hard NMS per class (ONNX NonMaxSuppression), IoU > {info['nms_iou_threshold']}",
    }
    try:
        path = export_onnx(detector, output, batch=args.batch, metadata=metadata)
    except ExportError as e:
        raise ToolError(str(e)) from e
    print(
        f"wrote {path}: {info['family']} ({metadata['framework']}), input {args.input_dtype} "
        f"RGB ({args.batch}, 3, {size[0]}, {size[1]}), opset {OPSET}"
    )
    if info["model_nms"] not in ("hard", "none"):
        print(
            f"note: the config uses {info['model_nms']} soft-NMS, which is not an ONNX operator; "
            f"the graph runs hard NMS at IoU {info['nms_iou_threshold']} (--nms-iou to change)"
        )
    return path


def run_cli(prog: str, parse, run_args, argv: list[str] | None) -> int:
    """Parse ``argv``, run; a :class:`ToolError` becomes one ``<prog>: error:`` line, status 1."""
    args = parse(argv)
    try:
        run_args(args)
    except ToolError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_cli("export_onnx.py", parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
