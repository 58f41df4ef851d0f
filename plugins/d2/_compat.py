"""Detectron2 without its C++ extension.

Detectron2 installed from the registry's copy of the v0.6 source has no ``detectron2._C``,
and ``detectron2.layers`` imports it at module level (deformable convolution, rotated boxes,
ROIAlignRotated), so even box-only code cannot import. Everything box detection needs runs in
pure torch/torchvision, so when the extension is missing we register a stand-in module
``detectron2._C`` whose members raise a clear ``RuntimeError`` naming the missing feature.
Installed packages are never edited: the stand-in lives only in ``sys.modules``.

Import ``plugins.d2`` (which imports this first) before ``detectron2.layers``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys
import types

__all__ = ["HAS_D2_C", "UNAVAILABLE_WITHOUT_C", "D2ExtensionMissingError", "install_missing_c_stub"]

logger = logging.getLogger(__name__)

#: What needs ``detectron2._C``, by the functions Detectron2 calls on it.
UNAVAILABLE_WITHOUT_C: dict[str, str] = {
    "box_iou_rotated": "rotated boxes (pairwise_iou_rotated, RotatedBoxes IoU, nms_rotated)",
    "roi_align_rotated_forward": "ROIAlignRotated",
    "roi_align_rotated_backward": "ROIAlignRotated",
    "deform_conv_forward": "deformable convolution (DeformConv)",
    "deform_conv_backward_input": "deformable convolution (DeformConv)",
    "deform_conv_backward_filter": "deformable convolution (DeformConv)",
    "modulated_deform_conv_forward": "modulated deformable convolution (ModulatedDeformConv)",
    "modulated_deform_conv_backward": "modulated deformable convolution (ModulatedDeformConv)",
    "InstanceAnnotation": "the fast COCO evaluator (use COCOEvaluator(..., use_fast_impl=False))",
    "COCOevalEvaluateImages": "the fast COCO evaluator (use COCOEvaluator(..., use_fast_impl=False))",
    "COCOevalAccumulate": "the fast COCO evaluator (use COCOEvaluator(..., use_fast_impl=False))",
}


class D2ExtensionMissingError(RuntimeError):
    """Raised when code calls into ``detectron2._C`` and the extension was not built."""


def _probe_real_extension() -> bool:
    existing = sys.modules.get("detectron2._C")
    if existing is not None:
        return not getattr(existing, "__plugins_stub__", False)
    try:
        return importlib.util.find_spec("detectron2._C") is not None
    except (ImportError, ValueError):
        return False


def _make_stub() -> types.ModuleType:
    stub = types.ModuleType("detectron2._C", "Stand-in for the missing Detectron2 C++ extension.")
    stub.__spec__ = importlib.machinery.ModuleSpec("detectron2._C", loader=None)
    stub.__plugins_stub__ = True  # type: ignore[attr-defined]
    # Queried by detectron2.utils.collect_env (DefaultTrainer's setup prints it).
    stub.get_compiler_version = lambda: "none (detectron2 installed without its C++ extension)"  # type: ignore[attr-defined]
    stub.get_cuda_version = lambda: "none (detectron2 installed without its C++ extension)"  # type: ignore[attr-defined]
    stub.has_cuda = lambda: False  # type: ignore[attr-defined]

    def __getattr__(name: str):  # PEP 562 module attribute hook
        if name.startswith("__"):
            raise AttributeError(name)
        feature = UNAVAILABLE_WITHOUT_C.get(name, f"detectron2._C.{name}")

        def _missing(*args, **kwargs):
            raise D2ExtensionMissingError(
                f"{feature} needs Detectron2's C++ extension (detectron2._C), which is not "
                "built in this installation. Install Detectron2 from its git repository to "
                "use it; box detection (RetinaNet, EfficientDet, CornerNet) does not need it."
            )

        _missing.__name__ = name
        return _missing

    stub.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return stub


def install_missing_c_stub() -> bool:
    """Register the stand-in ``detectron2._C`` if the real one is absent.

    Returns:
        ``True`` if the real extension is present, ``False`` if the stand-in is in use.
    """
    if _probe_real_extension():
        return True
    if "detectron2._C" in sys.modules:  # our stub, already installed
        return False
    import detectron2  # the top-level package imports nothing that needs _C

    stub = _make_stub()
    sys.modules["detectron2._C"] = stub
    detectron2._C = stub  # type: ignore[attr-defined]
    features = sorted(set(v.split(" (")[0] for v in UNAVAILABLE_WITHOUT_C.values()))
    logger.warning(
        "detectron2._C (Detectron2's C++ extension) is not built: using pure-torch code paths. "
        "Unavailable: %s. Calling one of them raises D2ExtensionMissingError.",
        ", ".join(features),
    )
    return False


HAS_D2_C: bool = install_missing_c_stub()
