"""Helpers shared by the deployment tests (tools/export_onnx.py, tools/predict.py): loading a
tool as a module, random-weight checkpoints of a config, embedded Shapes val images."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from plugins.data.shapes import ensure_shapes_dataset

REPO = Path(__file__).resolve().parents[2]

CONFIGS = {
    ("d2", "efficientdet"): "configs/demo/efficientdet_shapes.yaml",
    ("d2", "retinanet"): "configs/demo/retinanet_shapes.yaml",
    ("d2", "cornernet"): "configs/demo/cornernet_shapes.yaml",
    ("mm", "efficientdet"): "configs/mmdet/demo/efficientdet_shapes.py",
    ("mm", "retinanet"): "configs/mmdet/demo/retinanet_shapes.py",
    ("mm", "cornernet"): "configs/mmdet/demo/cornernet_shapes.py",
}
"""The demo config of each (framework, family)."""


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (once; it puts ``tools/`` on ``sys.path``)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------
# Models, checkpoints, images
# ------------------------------------------------------------------------------------------
def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Seeded random weights with varied outputs: BatchNorm statistics drawn at random, the
    class-prior biases (prior 0.01: about -4.6) spread around -1.5 so that many candidates pass
    the score thresholds, small noise on everything else."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or tensor.numel() == 0:
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            flat = tensor.flatten()
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            elif name.endswith("running_mean"):
                tensor.copy_(noise * 0.1)
            elif (
                name.endswith("bias") and flat[0] < -2 and bool((flat - flat[0]).abs().max() < 1e-6)
            ):
                tensor.copy_(noise - 1.5)
            else:
                tensor.add_(noise * 0.02)


def calibrate_batchnorm_(framework: str, model: torch.nn.Module, size: int) -> None:
    """BatchNorm statistics recomputed on four val images at ``size`` (the network part only).

    A deep network with random weights and arbitrary statistics gives feature maps that hardly
    vary across the image (D0: logits varying by 0.01 over positions), so the scores of
    different boxes tie to the last float digits and their order is float noise. Statistics
    measured on real images restore the contrast, as in a trained network (variances floored
    at 0.01: the coarsest levels see few positions).
    """
    adapter = importlib.import_module(f"plugins.{framework}.export")
    detector, _ = adapter.exportable_detector(model, (size, size))
    images = torch.from_numpy(val_images(size, 4)).float()
    if detector.network_channels == "BGR":
        images = images.flip(1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over what is run now
        bn.train()
    with torch.no_grad():
        detector.network((images - detector.pixel_mean) / detector.pixel_std)
        for bn in norms:
            bn.running_var.clamp_(min=0.01)
    model.eval()


def write_checkpoint(
    framework: str,
    config: str,
    path: Path,
    seed: int,
    extra: dict | None = None,
    calibrate_size: int | None = None,
) -> None:
    """A checkpoint of the config's model with :func:`perturb_` weights (BatchNorm statistics
    from :func:`calibrate_batchnorm_` at ``calibrate_size`` when given), in the framework's
    layout (Detectron2: ``model``; mmengine: ``state_dict`` and ``meta``), plus ``extra``."""
    torch.manual_seed(seed)
    if framework == "d2":
        from detectron2.modeling import build_model

        load_tool("export_onnx")  # puts tools/ on sys.path
        from train_net import load_config

        model = build_model(load_config(config, ["MODEL.DEVICE", "cpu"]))
    else:
        from mmdet.registry import MODELS
        from mmengine.config import Config

        model = MODELS.build(Config.fromfile(config).model)
    perturb_(model, seed)
    if calibrate_size:
        calibrate_batchnorm_(framework, model, calibrate_size)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    data = {"model": state} if framework == "d2" else {"state_dict": state, "meta": {}}
    torch.save({**data, **(extra or {})}, path)


def letterbox(image_rgb: np.ndarray, size: int) -> np.ndarray:
    """``(H, W, 3)`` -> ``(3, size, size)`` uint8: longer side resized to ``size``, zero padded."""
    scale = size / max(image_rgb.shape[:2])
    h, w = round(image_rgb.shape[0] * scale), round(image_rgb.shape[1] * scale)
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[:h, :w] = cv2.resize(image_rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1))


def val_images(size: int, count: int) -> np.ndarray:
    """``count`` embedded Shapes val images as ``(count, 3, size, size)`` uint8 RGB."""
    folder = Path(ensure_shapes_dataset().val_images)
    files = sorted(folder.glob("*.jpg"))[:count]
    assert len(files) == count
    return np.stack([letterbox(cv2.imread(str(f))[:, :, ::-1], size) for f in files])
