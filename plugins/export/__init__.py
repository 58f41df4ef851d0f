"""Deployment: whole detectors (preprocessing, network, decoding, NMS) as fixed-size ONNX graphs.

* :mod:`plugins.export.detector` -- :class:`ExportableDetector` and its parts (framework-free);
* :mod:`plugins.export.nms` -- per-class hard NMS as a static-shape op with an ONNX translation;
* :mod:`plugins.export.onnx` -- :func:`export_onnx` (atomic write, metadata, onnxruntime check)
  and :class:`OnnxDetector` (run an exported file);
* :mod:`plugins.export.loading` -- config type detection and model loading for the tools
  (imports Detectron2 or MMDetection lazily, only for the framework of the config).

The Detectron2 / MMDetection translations live in :mod:`plugins.d2.export` and
:mod:`plugins.mm.export`. Importing this package imports no framework.
"""

from plugins.export.detector import (
    AnchorDecoder,
    CornerDecoder,
    ExportableDetector,
    Selection,
    efficientdet_box_decoder,
)
from plugins.export.nms import class_nms

__all__ = [
    "AnchorDecoder",
    "CornerDecoder",
    "ExportableDetector",
    "Selection",
    "class_nms",
    "efficientdet_box_decoder",
]
