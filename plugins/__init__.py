"""Dense object detection components (RetinaNet, EfficientDet, CornerNet, Soft-NMS).

``plugins.core`` is pure torch; ``plugins.d2`` registers into Detectron2 and ``plugins.mm``
into MMDetection. Importing this package imports no framework.
"""

__version__ = "0.1.0"
